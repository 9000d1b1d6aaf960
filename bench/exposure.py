"""Benchmark: how soon a bucket turning public shows in /metrics, and what polling costs.

Runs the service in-process (``Service``: the scheduler, the crawls, the snapshot
rebuilds and the web app on one event loop, exactly as ``serve`` wires them, minus the
signal handling) against the simulator in its own thread, with a short bucket interval
(5 s by default). After the first instance crawl has finished, it flips buckets to
public at random moments (``sim.set_bucket_access``) and scrapes ``/metrics`` every
~50 ms until ``nexus_bucket_public{bucket=...} 1`` shows; the detection latency is the
time from the flip to that scrape. Printed:

- detection latency p50 / p99 / max, in seconds and as multiples of the interval
  (goal: p99 <= 1.2 x the interval);
- the requests one bucket poll takes, and the share of the default budget
  (250/min) that polling spends per hour at the default 1 m interval (goal <= 5%):
  requests per poll x 60 polls / (250 x 60);
- the snapshot rebuild after a bucket poll (buckets only) and after an instance crawl
  (full), measured on the service's own store.

Usage: ``.venv/bin/python bench/exposure.py [--flips 20] [--instances 5000]
[--buckets 200] [--interval 5] [--quick]``. ``--quick``: 5 flips.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import aiohttp
from aiohttp import web

from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import SystemClock
from nexus_audit.history.store import Store
from nexus_audit.logs import configure_logging
from nexus_audit.service.runtime import Service
from nexus_audit.simulator import SimulatorConfig, SimulatorThread

DEFAULT_BUDGET = 250  # requests per minute: the shipped NEXUS_RATE_BUDGET default
DEFAULT_POLLS_PER_HOUR = 60  # the default bucket interval, 1 m


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank rule."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def run(args: argparse.Namespace) -> int:
    """Start everything, flip, measure, print; the exit code."""
    configure_logging(json=True, level="warning")
    rng = random.Random(args.seed)
    sim_config = SimulatorConfig(instances=args.instances, buckets=args.buckets,
                                 seed=args.seed, rate_limit=max(1000, 2 * args.rate_budget))
    with SimulatorThread(sim_config) as sim, tempfile.TemporaryDirectory() as tmp:
        account = AccountConfig(name="bench", api_url=sim.url, api_key=Secret(sim.key),
                                rate_budget=args.rate_budget)
        settings = Settings(accounts=(account,), db_path=Path(tmp) / "bench.duckdb",
                            interval=timedelta(hours=1),
                            bucket_interval=timedelta(seconds=args.interval))
        store = Store(settings.db_path)
        store.migrate()
        service = Service(settings, store, load_pricing(None), clock=SystemClock(), grace=1.0)
        runner = web.AppRunner(service.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
        latencies: list[float] = []
        try:
            async with aiohttp.ClientSession() as session, service.crawling(session):
                started = time.monotonic()
                # The crawl counters have no event to wait on: poll them.
                while not service.crawl_stats.counts().get(  # noqa: ASYNC110
                        ("bench", "instances", "succeeded")):
                    await asyncio.sleep(0.2)
                print(f"fleet: {args.instances:,} instances, {args.buckets:,} buckets; first "
                      f"instance crawl done after {time.monotonic() - started:.1f} s at "
                      f"{args.rate_budget}/min; bucket interval {args.interval:g} s")
                private = [b.id for b in sim.fleet.query_buckets() if b.access == "private"]
                targets = rng.sample(private, args.flips)
                for n, bucket in enumerate(targets, 1):
                    await asyncio.sleep(rng.uniform(0.0, args.interval))
                    flipped = time.monotonic()
                    sim.set_bucket_access(bucket, "public")
                    pattern = re.compile(
                        r'^nexus_bucket_public\{[^}]*bucket="' + re.escape(bucket)
                        + r'"[^}]*\} 1(\.0)?$', re.MULTILINE)
                    while True:
                        async with session.get(url) as response:
                            body = await response.text()
                        if pattern.search(body):
                            break
                        if time.monotonic() - flipped > 10 * args.interval:
                            raise SystemExit(f"flip {n}: {bucket} not public in /metrics "
                                             f"after {10 * args.interval:g} s")
                        await asyncio.sleep(0.05)
                    latencies.append(time.monotonic() - flipped)
                polls = [r for r in sim.request_log.records() if r.path == "/v2/buckets"]
                bucket_crawls = service.crawl_stats.counts().get(
                    ("bench", "buckets", "succeeded"), 0)
            rebuild_buckets = []
            rebuild_full = []
            for _ in range(3):
                t = time.perf_counter()
                service.rebuild_snapshot(kinds=("buckets",))
                rebuild_buckets.append(time.perf_counter() - t)
                t = time.perf_counter()
                service.rebuild_snapshot()
                rebuild_full.append(time.perf_counter() - t)
        finally:
            await runner.cleanup()
    iv = args.interval
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(f"detection latency over {len(latencies)} flips: p50 {p50:.2f} s ({p50 / iv:.2f}x), "
          f"p99 {p99:.2f} s ({p99 / iv:.2f}x), max {max(latencies):.2f} s "
          f"({max(latencies) / iv:.2f}x), mean {statistics.mean(latencies):.2f} s "
          f"[goal p99 <= 1.2x]")
    per_poll = len(polls) / max(1, bucket_crawls)
    share = per_poll * DEFAULT_POLLS_PER_HOUR / (DEFAULT_BUDGET * 60)
    print(f"bucket polling: {per_poll:.2f} requests per poll ({len(polls)} over "
          f"{bucket_crawls} polls); at the default 1 m interval that is "
          f"{per_poll * DEFAULT_POLLS_PER_HOUR:.0f} of {DEFAULT_BUDGET * 60} requests/hour "
          f"= {100 * share:.2f}% of the default budget [goal <= 5%]")
    print(f"snapshot rebuild: after a bucket poll {min(rebuild_buckets) * 1000:.0f} ms, "
          f"full {min(rebuild_full) * 1000:.0f} ms (best of 3)")
    return 0


def main() -> int:
    """Parse the flags and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--flips", type=int, default=20)
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--buckets", type=int, default=200)
    parser.add_argument("--interval", type=float, default=5.0, help="bucket interval, s")
    parser.add_argument("--rate-budget", type=int, default=DEFAULT_BUDGET)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="5 flips")
    args = parser.parse_args()
    if args.quick:
        args.flips = min(args.flips, 5)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
