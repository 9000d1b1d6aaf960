"""Benchmark of ``serve``'s read side: /metrics and /report over a large stored fleet.

Builds a history of 100,000 instances and 5,000 buckets over the last 30 days through the
store's own API (staged crawls, commits), starts the ``serve`` web app over it in a child
process (no crawls are scheduled: the API is not involved), then measures from this
process:

- the snapshot rebuild after a commit (store read, aggregation, stale query, pre-render);
- ``GET /metrics``: latency (sequential scrapes) and body size, plain and gzip;
- ``GET /report?since=30d``: latency at 20 concurrent clients.

Usage: ``.venv/bin/python bench/scrape.py [--instances N] [--buckets M] [--scrapes K]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.model import Bucket, CrawlSummary, Instance, Kind
from nexus_audit.history.store import Store

REGIONS = ("us-east-1", "us-west-2", "us-central1", "eu-west-1", "eu-west-2", "eu-central-1",
           "ap-south-1", "ap-northeast-1")
PLANS = {"nano": (1, 1.0), "micro": (1, 2.0), "standard": (2, 8.0), "performance": (8, 32.0)}
ACCOUNT = "bench"
INSTANCE_CRAWLS = 8  # over 30 days
BUCKET_CRAWLS = 30


def make_instance(rng: random.Random, index: int) -> Instance:
    plan = rng.choice(tuple(PLANS))
    cpu, memory = PLANS[plan]
    status = rng.choices(("running", "stopped", "pending"), (90, 9, 1))[0]
    return Instance(id=f"i-{index:07d}", name=f"vm-{index}", status=status,
                    region=rng.choice(REGIONS), cpu=cpu, memory_gb=memory, plan=plan,
                    tags='{"team":"bench"}', created_at="2026-01-01T00:00:00Z", extra="{}")


def make_bucket(rng: random.Random, index: int) -> Bucket:
    access = rng.choices(("private", "public", "public-read"), (95, 3, 2))[0]
    return Bucket(id=f"bkt-{index:06d}", region=rng.choice(REGIONS),
                  size_bytes=rng.randrange(10**6, 10**12), access=access,
                  created_at="2026-01-01T00:00:00Z", tags="{}", extra="{}")


def commit(store: Store, kinds: tuple[Kind, ...], finished: datetime,
           instances: list[Instance], buckets: list[Bucket]) -> None:
    """Stage and commit one crawl through the store's API."""
    started = finished - timedelta(seconds=30)
    staged = store.begin_crawl(ACCOUNT, kinds, started)
    for i in range(0, len(instances), 5000):
        staged.add_instances(instances[i:i + 5000])
    if "buckets" in kinds:
        staged.add_buckets(buckets)
    store.commit(staged, CrawlSummary(
        account=ACCOUNT, kinds=kinds, started_at=started, finished_at=finished,
        status="succeeded", instances=len(instances), buckets=len(buckets),
        requests=len(instances) // 100 + 1, retries=0))


def build_history(db: Path, n_instances: int, n_buckets: int) -> float:
    """Write 30 days of crawls with churn; the seconds it took."""
    rng = random.Random(5)
    started = time.perf_counter()
    store = Store(db)
    store.migrate()
    instances = [make_instance(rng, i) for i in range(n_instances)]
    buckets = [make_bucket(rng, i) for i in range(n_buckets)]
    now = datetime.now(UTC)
    begin = now - timedelta(days=30)
    events: list[tuple[datetime, Kind]] = []
    for k in range(INSTANCE_CRAWLS):
        events.append((begin + timedelta(days=30 * (k + 0.5) / INSTANCE_CRAWLS), "instances"))
    for k in range(BUCKET_CRAWLS):
        events.append((begin + timedelta(days=k + 0.6), "buckets"))
    next_id = n_instances
    for moment, kind in sorted(events):
        if kind == "instances":
            # 1% status changes, 0.5% removed, 0.5% added per crawl.
            for _ in range(n_instances // 100):
                j = rng.randrange(len(instances))
                instances[j] = instances[j]._replace(
                    status=rng.choice(("running", "stopped")))
            for _ in range(n_instances // 200):
                instances.pop(rng.randrange(len(instances)))
                instances.append(make_instance(rng, next_id))
                next_id += 1
            commit(store, ("instances",), moment, instances, [])
        else:
            for _ in range(max(1, n_buckets // 50)):
                j = rng.randrange(len(buckets))
                buckets[j] = buckets[j]._replace(size_bytes=buckets[j].size_bytes + 10**6)
            j = rng.randrange(len(buckets))
            buckets[j] = buckets[j]._replace(access=rng.choice(("private", "public")))
            commit(store, ("buckets",), moment, [], buckets)
    return time.perf_counter() - started


def serve_child(db: str, per_instance: bool) -> None:
    """Child process: the serve app over ``db`` with no scheduled crawls; prints its port."""
    from aiohttp import web

    from nexus_audit.domain.pricing import load_pricing
    from nexus_audit.domain.timeutil import SystemClock
    from nexus_audit.logs import configure_logging
    from nexus_audit.service.runtime import Service

    configure_logging(json=True)
    settings = Settings(
        accounts=(AccountConfig(name=ACCOUNT, api_url="http://127.0.0.1:9/v2",
                                api_key=Secret("nx_bench_unused_key")),),
        db_path=Path(db), per_instance_metrics=per_instance)
    service = Service(settings, Store(db), load_pricing(None), clock=SystemClock(), grace=0)

    async def main() -> None:
        started = time.perf_counter()
        service.rebuild_snapshot()
        rebuild = time.perf_counter() - started
        started = time.perf_counter()
        service.rebuild_snapshot(kinds=("buckets",))
        rebuild_no_stale = time.perf_counter() - started
        runner = web.AppRunner(service.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(json.dumps({"port": runner.addresses[0][1], "rebuild_s": rebuild,
                          "rebuild_buckets_only_s": rebuild_no_stale}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def measure(port: int, scrapes: int, reports: int, concurrency: int) -> dict[str, float]:
    """Client side: /metrics sequentially, then /report at ``concurrency`` clients."""
    base = f"http://127.0.0.1:{port}"
    out: dict[str, float] = {}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for encoding, label in (("identity", "plain"), ("gzip", "gzip")):
            times = []
            size = 0
            for _ in range(scrapes):
                started = time.perf_counter()
                async with session.get(f"{base}/metrics",
                                       headers={"Accept-Encoding": encoding}) as response:
                    body = await response.read()
                    assert response.status == 200
                times.append(time.perf_counter() - started)
                size = len(body)
            out[f"metrics_{label}_p50_ms"] = statistics.median(times) * 1000
            out[f"metrics_{label}_p99_ms"] = percentile(times, 99) * 1000
            out[f"metrics_{label}_bytes"] = size
        started = time.perf_counter()
        async with session.get(f"{base}/report?since=30d") as response:
            first = await response.read()
            assert response.status == 200, first[:300]
        out["report_first_ms"] = (time.perf_counter() - started) * 1000
        out["report_bytes"] = len(first)

        latencies: list[float] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(reports):
            queue.put_nowait(i)

        async def client() -> None:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                began = time.perf_counter()
                async with session.get(f"{base}/report?since=30d") as answer:
                    await answer.read()
                    assert answer.status == 200
                latencies.append(time.perf_counter() - began)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        out["report_p50_ms"] = statistics.median(latencies) * 1000
        out["report_p99_ms"] = percentile(latencies, 99) * 1000
        out["report_per_s"] = len(latencies) / wall
    return out


def main() -> int:
    """Build the history, start the app, measure, print the figures."""
    if len(sys.argv) >= 2 and sys.argv[1] == "_serve":
        serve_child(sys.argv[2], sys.argv[3] == "1")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--buckets", type=int, default=5_000)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--reports", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--per-instance", action="store_true",
                        help="also emit nexus_instance_info (off by default in serve)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        db = Path(tmp) / "bench.duckdb"
        built = build_history(db, args.instances, args.buckets)
        print(f"history: {args.instances:,} instances, {args.buckets:,} buckets, "
              f"{INSTANCE_CRAWLS} instance + {BUCKET_CRAWLS} bucket crawls over 30 days, "
              f"written in {built:.1f}s ({db.stat().st_size / 1e6:.1f} MB)")
        child = subprocess.Popen(
            [sys.executable, __file__, "_serve", str(db), "1" if args.per_instance else "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert child.stdout is not None
            ready = json.loads(child.stdout.readline())
            print(f"snapshot rebuild after an instance crawl: {ready['rebuild_s'] * 1000:.0f} ms; "
                  f"after a bucket poll: {ready['rebuild_buckets_only_s'] * 1000:.0f} ms")
            figures = asyncio.run(measure(ready["port"], args.scrapes, args.reports,
                                          args.concurrency))
        finally:
            child.kill()
            child.wait()
    print(f"/metrics (per-instance series {'on' if args.per_instance else 'off'}): "
          f"p50 {figures['metrics_plain_p50_ms']:.1f} ms, "
          f"p99 {figures['metrics_plain_p99_ms']:.1f} ms, "
          f"{figures['metrics_plain_bytes'] / 1e6:.2f} MB; gzip p50 "
          f"{figures['metrics_gzip_p50_ms']:.1f} ms, {figures['metrics_gzip_bytes'] / 1e3:.0f} kB")
    print(f"/report?since=30d: first {figures['report_first_ms']:.0f} ms "
          f"({figures['report_bytes'] / 1e3:.0f} kB); at {args.concurrency} concurrent clients "
          f"p50 {figures['report_p50_ms']:.0f} ms, p99 {figures['report_p99_ms']:.0f} ms, "
          f"{figures['report_per_s']:.1f} reports/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
