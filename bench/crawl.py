"""Crawler benchmark against the simulator on loopback (a benchmark, not a test).

    python bench/crawl.py [--quick]

Every figure and ratio is measured in the same run; the simulator runs in its own
process (``python -m nexus_audit.simulator``), so its CPU and memory are not the
crawler's.

1. budget-bound: 20,000 instances, server limit and our budget both 6000/min. Goal
   wall / (requests / budget) <= 1.05 with the minimum number of requests. Run twice: with
   the real 60 s window (201 requests fit in one window's budget, so the budget cannot
   bind and the figure shows the single cursor chain's own speed) and with both windows
   scaled to 1 s (100 requests a second: the budget binds).
2. latency-bound: 20,000 instances in 8 regions, 200 ms a request, generous budget:
   our crawl (region fan-out from the previous crawl's regions) versus a plain
   sequential cursor walk. Goal at least 5x.
3. shared key: the server's limit below our budget and another tool spending part of it
   on the same key: the crawl completes with the right count, fewer 429s than reset windows.
4. peak RSS of a 200,000-instance crawl in a child process (goal < 300 MB), with a sink
   that drops the records and with the DuckDB store's staging.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Errors only: the figures are the output.
from nexus_audit.logs import configure_logging  # noqa: E402

configure_logging(json=True, level=40)

from nexus_audit.api import ApiStats, CloudNexusClient, RateBudget  # noqa: E402
from nexus_audit.config import AccountConfig, Secret  # noqa: E402
from nexus_audit.crawl.crawler import crawl_account  # noqa: E402
from nexus_audit.domain.model import Bucket, CrawlSummary, Instance  # noqa: E402
from nexus_audit.domain.timeutil import SystemClock  # noqa: E402
from nexus_audit.simulator.fleet import REGIONS  # noqa: E402


@dataclass
class Sim:
    """A simulator process: its API URL, key and process."""

    url: str
    key: str
    proc: subprocess.Popen[str]

    @property
    def base(self) -> str:
        """The URL without ``/v2`` (where ``/_sim`` lives)."""
        return self.url.removesuffix("/v2")


@contextmanager
def simulator(**options: Any) -> Iterator[Sim]:
    """Run ``nexus-audit simulate --port 0`` with ``options``; stop it by its pid."""
    cmd = [sys.executable, "-m", "nexus_audit.simulator", "--port", "0"]
    for name, value in options.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        key = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"simulator did not start: {url!r}")
        yield Sim(url, key, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class CountingSink:
    """A sink that only counts (the crawler's own memory and speed)."""

    def __init__(self) -> None:
        self.instances = 0
        self.buckets = 0

    def add_instances(self, batch: Sequence[Instance]) -> None:
        self.instances += len(batch)

    def add_buckets(self, batch: Sequence[Bucket]) -> None:
        self.buckets += len(batch)


def make_client(sim: Sim, session: aiohttp.ClientSession, per_minute: int,
                window: float = 60.0) -> CloudNexusClient:
    """Our client on ``sim`` with a budget of ``per_minute`` over ``window`` seconds."""
    clock = SystemClock()
    account = AccountConfig(name="bench", api_url=sim.url, api_key=Secret(sim.key),
                            rate_budget=per_minute)
    budget = RateBudget(per_minute, clock=clock, window=window)
    return CloudNexusClient(account, session, budget, stats=ApiStats(), timeout=30.0,
                            clock=clock)


async def our_crawl(sim: Sim, per_minute: int, *, window: float = 60.0,
                    regions: Sequence[str] = ()) -> tuple[CrawlSummary, CountingSink, float]:
    """One crawl with our crawler; the summary, the sink and the wall time."""
    sink = CountingSink()
    async with aiohttp.ClientSession() as session:
        client = make_client(sim, session, per_minute, window)
        started = time.perf_counter()
        summary = await crawl_account(client, "bench", sink, previous_regions=regions,
                                      clock=SystemClock())
        wall = time.perf_counter() - started
    return summary, sink, wall


async def sequential_walk(sim: Sim) -> tuple[int, int, float]:
    """A plain cursor walk (limit=100), one request at a time: (instances, requests, wall)."""
    headers = {"Authorization": f"Bearer {sim.key}"}
    count = requests = 0
    started = time.perf_counter()
    async with aiohttp.ClientSession(headers=headers) as session:
        params = {"limit": "100"}
        while True:
            async with session.get(f"{sim.url}/instances", params=params) as resp:
                resp.raise_for_status()
                body = await resp.json()
            requests += 1
            count += len(body["instances"])
            cursor = body["pagination"].get("next_cursor")
            if not cursor:
                break
            params["cursor"] = cursor
        async with session.get(f"{sim.url}/buckets") as resp:
            resp.raise_for_status()
            await resp.read()
        requests += 1
    return count, requests, time.perf_counter() - started


async def request_log(sim: Sim) -> list[dict[str, Any]]:
    """The simulator's request log."""
    async with aiohttp.ClientSession() as session, session.get(
            f"{sim.base}/_sim/requests", headers={"Authorization": f"Bearer {sim.key}"}) as resp:
        resp.raise_for_status()
        body = await resp.json()
    records: list[dict[str, Any]] = body["requests"]
    return records


def max_in_window(times: list[float], window: float) -> int:
    """The most requests inside any ``window`` seconds."""
    ordered = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ordered):
        while ordered[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def line(label: str, value: str) -> None:
    """One aligned result line."""
    print(f"  {label:<44} {value}", flush=True)


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


async def bench_budget_bound(n: int) -> None:
    """Budget and server limit both 6000/min."""
    print(f"\n1. budget-bound: {n:,} instances, server limit and budget 6000/min")
    minimum = math.ceil(n / 100) + 1
    for window in (60.0, 1.0):
        limit = round(6000 * window / 60)
        with simulator(instances=n, buckets=20, rate_limit=limit, rate_window=window) as sim:
            summary, sink, wall = await our_crawl(sim, 6000, window=window)
            log = await request_log(sim)
        assert summary.status == "succeeded", summary.error
        ideal = summary.requests / (6000 / 60)
        ratio = wall / ideal
        rejected = sum(1 for r in log if r["status"] == 429)
        peak = max_in_window([r["time"] for r in log], window)
        print(f"  -- {window:g} s window ({limit} requests per window)")
        line("instances / requests (minimum)",
             f"{sink.instances:,} / {summary.requests} ({minimum})")
        line("wall / (requests / budget)",
             f"{wall:.2f}s / {ideal:.2f}s = {ratio:.2f}  goal <= 1.05: {verdict(ratio <= 1.05)}")
        line("429s; most requests in any window", f"{rejected}; {peak} (limit {limit})")


async def bench_latency_bound(n: int) -> None:
    """200 ms a request: region fan-out versus one cursor chain."""
    print(f"\n2. latency-bound: {n:,} instances in 8 regions, 200 ms a request")
    with simulator(instances=n, buckets=20, latency=0.2, rate_limit=100_000) as sim:
        summary, sink, ours = await our_crawl(sim, 60_000, regions=REGIONS)
        count, seq_requests, sequential = await sequential_walk(sim)
    assert summary.status == "succeeded", summary.error
    assert sink.instances == count == n
    speedup = sequential / ours
    line("sequential cursor walk", f"{sequential:.2f}s, {seq_requests} requests")
    line("our crawl (8 region chains + buckets)", f"{ours:.2f}s, {summary.requests} requests")
    line("speed-up", f"{speedup:.1f}x  goal >= 5x: {verdict(speedup >= 5)}")


async def other_tool(sim: Sim, per_second: float, stop: asyncio.Event) -> int:
    """Another tool on the same key: GET /buckets at a steady rate; its request count."""
    headers = {"Authorization": f"Bearer {sim.key}"}
    sent = 0
    async with aiohttp.ClientSession(headers=headers) as session:
        while not stop.is_set():
            async with session.get(f"{sim.url}/buckets") as resp:
                await resp.read()
            sent += 1
            await asyncio.sleep(1.0 / per_second)
    return sent


async def bench_shared_key(n: int) -> None:
    """The server's limit is below our budget, and another tool spends part of it."""
    window, limit, others = 1.0, 20, 8.0
    print(f"\n3. shared key: {n:,} instances; server {limit} per {window:g} s window "
          f"({limit * 60 / window:.0f}/min), our budget 6000/min, another tool "
          f"{others:g}/s on the key")
    with simulator(instances=n, buckets=20, rate_limit=limit, rate_window=window) as sim:
        stop = asyncio.Event()
        tool = asyncio.create_task(other_tool(sim, others, stop))
        await asyncio.sleep(0.5)
        summary, sink, wall = await our_crawl(sim, 6000, window=window, regions=REGIONS)
        stop.set()
        await tool
        log = await request_log(sim)
    assert summary.status == "succeeded", summary.error
    ours_429 = summary.requests_by_endpoint.get("GET /instances", {}).get("429", 0) + \
        summary.requests_by_endpoint.get("GET /buckets", {}).get("429", 0)
    all_429 = sum(1 for r in log if r["status"] == 429)
    windows = math.ceil(wall / window)
    line("instances collected / in the fleet", f"{sink.instances:,} / {n:,}")
    line("wall, requests", f"{wall:.2f}s, {summary.requests}")
    line("our 429s / reset windows spanned",
         f"{ours_429} / {windows}  goal < 1 per window: {verdict(ours_429 < windows)}")
    line("429s on the key (both tools)", str(all_429))


def rss_child(url: str, key: str, sink_kind: str) -> None:
    """In a child process: crawl, then print peak RSS and counts as JSON."""
    async def main() -> dict[str, Any]:
        sim = Sim(url, key, None)  # type: ignore[arg-type]
        if sink_kind == "store":
            from datetime import UTC, datetime

            from nexus_audit.history.store import Store

            with tempfile.TemporaryDirectory() as tmp:
                store = Store(Path(tmp) / "bench.duckdb")
                store.migrate()
                staged = store.begin_crawl("bench", ("instances", "buckets"), datetime.now(UTC))
                async with aiohttp.ClientSession() as session:
                    client = make_client(sim, session, 600_000)
                    started = time.perf_counter()
                    summary = await crawl_account(client, "bench", staged,
                                                  previous_regions=REGIONS, clock=SystemClock())
                    wall = time.perf_counter() - started
                store.commit(staged, summary)
                instances = summary.instances
        else:
            summary, sink, wall = await our_crawl(sim, 600_000, regions=REGIONS)
            instances = sink.instances
        return {"instances": instances, "status": summary.status, "seconds": wall}

    result = asyncio.run(main())
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def bench_rss(n: int) -> None:
    """Peak RSS of crawling ``n`` instances, in a child process."""
    print(f"\n4. peak RSS: {n:,} instances (crawler in a child process, simulator in another)")
    with simulator(instances=n, buckets=200, rate_limit=1_000_000) as sim:
        for sink in ("null", "store"):
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", sim.url, sim.key, sink],
                cwd=ROOT, capture_output=True, text=True, check=True, timeout=900)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if result["status"] != "succeeded" or result["instances"] != n:
                raise RuntimeError(f"RSS crawl incomplete: {result}")
            label = "counting sink" if sink == "null" else "DuckDB store staging + commit"
            line(f"peak RSS, {label}",
                 f"{result['peak_rss_mb']:.0f} MB in {result['seconds']:.1f}s  "
                 f"goal < 300 MB: {verdict(result['peak_rss_mb'] < 300)}")


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller fleets, a few seconds each")
    parser.add_argument("--only", choices=["budget", "latency", "shared", "rss"],
                        action="append", help="run only these scenarios (repeatable)")
    parser.add_argument("--rss-child", nargs=3, metavar=("URL", "KEY", "SINK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    random.seed(1)
    scale = 4 if args.quick else 1
    print(f"nexus-audit crawl benchmark{' (quick)' if args.quick else ''}; python "
          f"{sys.version.split()[0]}, loopback")
    only = set(args.only or ["budget", "latency", "shared", "rss"])
    if "budget" in only:
        asyncio.run(bench_budget_bound(20_000 // scale))
    if "latency" in only:
        asyncio.run(bench_latency_bound(20_000 // scale))
    if "shared" in only:
        asyncio.run(bench_shared_key(20_000 // scale))
    if "rss" in only:
        bench_rss(200_000 // (scale * 5 if args.quick else 1))

if __name__ == "__main__":
    main()
