"""Benchmark the history store and the report on a synthetic year (not a test).

A fleet of 10,000 instances and 500 buckets, crawled hourly (both kinds) for 365 days with
1% churn a day (instances and buckets replaced, instance statuses flipped, spread over the
hours) and bucket sizes growing, all written through the store's own API
(begin_crawl / add_instances / add_buckets / commit). Prints the ingest rate (observations
per second), the database size, the latency of build_report for 30 and 365 days, and that
of a lone commit at the end (as a service crawling hourly makes it: not in a burst).

Only the store's calls are timed (split into staging: begin_crawl and the adds, and the
commit); making each hour's churn happens outside the timed region and is printed apart.
A commit in a burst is almost all DuckDB's fixed cost per statement (the transaction, the
crawl's row, one append per log with changes: about 4.5 ms on a 2-core machine, whatever
the number of changes); staging is fingerprinting every record (about 0.3 µs each).

By default each crawl hands the store the same record objects as the hour before, whose
strings already know their hashes, so staging (which fingerprints every record) costs
less than with a crawler's records, fresh from JSON every time. Those long-lived objects
also scatter in memory as the year churns them, which makes staging slower towards the
year's end (rebuilding them as new objects with warm hashes mid-year brought it back from
4.5 to 3.2 ms a crawl). ``--fresh-records`` copies every record before each crawl
(outside the timed region) to measure a crawler's case.

    .venv/bin/python bench/history.py                   # the full year (about 2 minutes)
    .venv/bin/python bench/history.py --days 14         # a quick run
    .venv/bin/python bench/history.py --fresh-records   # records as a crawler makes them
    .venv/bin/python bench/history.py --days 30 --bucket-every 1   # serve's default schedule

``--bucket-every M`` adds bucket-only crawls every M minutes between the hourly crawls of
both kinds, as ``serve`` makes them by default (``bucket_interval = "1m"``), with the
hour's bucket growth spread over them: 60 times the crawls, and bucket history in minutes.
"""

from __future__ import annotations

import argparse
import pickle
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reference import reference_runs  # bench/reference.py, beside this file

from nexus_audit.audit.report import build_report
from nexus_audit.domain.model import Bucket, CrawlSummary, Instance, Kind
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import Window
from nexus_audit.history import store as store_module
from nexus_audit.history.duckfile import LINGER, DuckFiles
from nexus_audit.history.store import Store
from nexus_audit.history.verify import verify_history

PLANS = (("nano", 1, 1.0), ("micro", 2, 2.0), ("standard", 4, 16.0), ("performance", 16, 64.0),
         (None, 8, 32.0))
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "ap-south-1")
START = datetime(2025, 1, 1, tzinfo=UTC)


def make_instance(rng: random.Random, n: int) -> Instance:
    """A new synthetic instance."""
    plan, cpu, mem = rng.choice(PLANS)
    return Instance(f"i-{n:07d}", f"host-{n}", "running" if rng.random() < 0.8 else "stopped",
                    rng.choice(REGIONS), cpu, mem, plan,
                    f'{{"env":"{rng.choice(("prod", "dev"))}","team":"t{n % 17}"}}',
                    "2024-12-01T00:00:00Z", "{}")


def make_bucket(rng: random.Random, n: int) -> Bucket:
    """A new synthetic bucket."""
    return Bucket(f"b-{n:06d}", rng.choice(REGIONS), rng.randrange(10**6, 10**12),
                  "private" if rng.random() < 0.97 else "public-read",
                  "2024-12-01T00:00:00Z", "{}", "{}")


def fresh(pages: list[list[Any]]) -> list[list[tuple[Any, ...]]]:
    """Copies of ``pages``' records as plain tuples, down to new strings (as parsed JSON)."""
    copied: list[list[tuple[Any, ...]]] = pickle.loads(  # noqa: S301 - our own bytes
        pickle.dumps([[tuple(r) for r in page] for page in pages]))
    return copied


def commit_crawl(store: Store, at: datetime, pages: list[list[Instance]] | None,
                 buckets: list[Bucket]) -> tuple[float, float]:
    """One crawl through the store's API: instances (``pages``, unless None) and buckets,
    finishing soon after ``at``. Returns the seconds spent staging and in all."""
    kinds: tuple[Kind, ...] = ("buckets",) if pages is None else ("instances", "buckets")
    t0 = time.perf_counter()
    staged = store.begin_crawl("bench", kinds, at)
    for page in pages or ():
        staged.add_instances(page)
    staged.add_buckets(buckets)
    t1 = time.perf_counter()
    store.commit(staged, CrawlSummary(
        account="bench", kinds=kinds, started_at=at,
        finished_at=at + timedelta(seconds=2 if pages is None else 40), status="succeeded",
        instances=sum(map(len, pages or ())), buckets=len(buckets),
        requests=5 if pages is None else 105))
    return t1 - t0, time.perf_counter() - t0


#: Seconds spent sealing commits into the evidence chain (inside the commit's time).
SEALING = [0.0]


def _timed_seal(*args: Any, **kwargs: Any) -> Any:
    t0 = time.perf_counter()
    try:
        return _real_seal(*args, **kwargs)
    finally:
        SEALING[0] += time.perf_counter() - t0


_real_seal = store_module.seal
store_module.seal = _timed_seal  # the chain's share of each commit, measured in the same run


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--buckets", type=int, default=500)
    parser.add_argument("--db", type=Path, help="database file (default: a temp dir)")
    parser.add_argument("--fresh-records", action="store_true",
                        help="new record objects (and strings) for every crawl")
    parser.add_argument("--bucket-every", type=int, default=60, metavar="MINUTES",
                        help="also crawl buckets alone every MINUTES (default 60: never)")
    args = parser.parse_args(argv)
    if not 1 <= args.bucket_every <= 60:
        parser.error("--bucket-every: give minutes from 1 to 60")
    rng = random.Random(7)
    tmp = tempfile.TemporaryDirectory(prefix="nexus-bench-")
    path = args.db or Path(tmp.name) / "history.duckdb"
    files = DuckFiles()  # this process's, for its one file
    store = Store(path, files=files)
    store.migrate()

    instances = [make_instance(rng, n) for n in range(args.instances)]
    buckets = [make_bucket(rng, n) for n in range(args.buckets)]
    next_i, next_b = args.instances, args.buckets
    # 1% a day, spread over the day's 24 crawls: replacements and status flips.
    churn_i = max(1, args.instances // 100)
    churn_b = max(1, args.buckets // 100)
    # A twentieth of the buckets grow each hour, spread over the hour's bucket crawls.
    minutes = range(0, 60, args.bucket_every)
    grow = max(1, len(buckets) // 20)
    hours = args.days * 24
    crawls = observations = 0
    spent = staging = generating = 0.0
    # Per kind of crawl (both kinds, buckets alone): crawls and seconds spent.
    counts = {"both": 0, "buckets": 0}
    seconds = {"both": 0.0, "buckets": 0.0}
    wall = time.perf_counter()
    mark = (0, 0, 0.0, 0.0)  # crawls, observations, spent and staging at the last weekly line
    # The host's speed each week (bench/reference.py, untimed): a week slower than the
    # others on a host running a third slower that week reads as the host, not the code.
    speeds: list[float] = []
    for hour in range(hours):
        g0 = time.perf_counter()
        for _ in range(churn_i // 24 + (1 if rng.random() < (churn_i % 24) / 24 else 0)):
            k = rng.randrange(len(instances))
            if rng.random() < 0.5:
                instances[k] = make_instance(rng, next_i)
                next_i += 1
            else:
                old = instances[k]
                instances[k] = old._replace(
                    status="stopped" if old.status == "running" else "running")
        if rng.random() < churn_b / 24:
            buckets[rng.randrange(len(buckets))] = make_bucket(rng, next_b)
            next_b += 1
        generating += time.perf_counter() - g0
        for minute in minutes:
            g0 = time.perf_counter()
            share = grow if len(minutes) == 1 else grow // len(minutes) + (
                1 if rng.random() < (grow % len(minutes)) / len(minutes) else 0)
            for k in rng.sample(range(len(buckets)), k=share):
                buckets[k] = buckets[k]._replace(size_bytes=buckets[k].size_bytes + 10**7)
            at = START + timedelta(hours=hour, minutes=minute)
            pages: list[list[Instance]] | None = None
            if minute == 0:
                pages = [instances[i:i + 1000]  # pages as the crawler would hand them
                         for i in range(0, len(instances), 1000)]
            crawled_buckets = buckets
            if args.fresh_records:
                if pages is not None:
                    pages = [list(map(Instance._make, page)) for page in fresh(pages)]
                crawled_buckets = list(map(Bucket._make, fresh([buckets])[0]))
            generating += time.perf_counter() - g0
            staged_s, spent_s = commit_crawl(store, at, pages, crawled_buckets)
            staging += staged_s
            spent += spent_s
            crawls += 1
            observations += len(buckets) + (0 if pages is None else len(instances))
            which = "buckets" if pages is None else "both"
            counts[which] += 1
            seconds[which] += spent_s
        if hour % (24 * 7) == 24 * 7 - 1:
            n = crawls - mark[0]
            week = (observations - mark[1], spent - mark[2], staging - mark[3])
            mark = (crawls, observations, spent, staging)
            speeds.append(reference_runs(1)[0])
            print(f"  day {hour // 24 + 1}: this week {week[0] / week[1]:,.0f} observations/s "
                  f"(staging {week[2] / n * 1000:.1f} ms, commit "
                  f"{(week[1] - week[2]) / n * 1000:.1f} ms a crawl; reference workload "
                  f"{speeds[-1]:.1f} runs per CPU-second)", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - wall
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    schedule = "hourly" if len(minutes) == 1 else (
        f"instances hourly, buckets every {args.bucket_every} min")
    print(f"history: {args.instances:,} instances, {args.buckets:,} buckets, {schedule} for "
          f"{args.days} days = {crawls:,} crawls, {observations:,} observations")
    print(f"ingest: {observations / spent:,.0f} observations/s "
          f"({spent / crawls * 1000:.1f} ms per crawl: staging {staging / crawls * 1000:.1f}, "
          f"commit {(spent - staging) / crawls * 1000:.1f}; {elapsed:.0f} s in all)")
    if speeds:
        print(f"  the host meanwhile: reference workload {statistics.median(speeds):.1f} runs "
              f"per CPU-second (median of {len(speeds)} weeks; {min(speeds):.1f} to "
              f"{max(speeds):.1f}; usual on this project's machine 11 to 14, slow phases 8 "
              f"to 9): {observations / spent / statistics.median(speeds):,.0f} observations "
              "per reference run")
    if len(minutes) > 1:
        for which, n in counts.items():
            print(f"  {which}: {n:,} crawls, {seconds[which] / n * 1000:.1f} ms each")
    print(f"  not timed: making the churn and pages, {generating / crawls * 1000:.2f} ms "
          "per crawl")
    commit_ms = (spent - staging) / crawls * 1000
    seal_ms = SEALING[0] / crawls * 1000
    print(f"  evidence chain: {seal_ms:.2f} ms of each commit's {commit_ms:.1f} ms "
          f"(without it {commit_ms - seal_ms:.1f} ms: +{seal_ms / (commit_ms - seal_ms):.1%})")
    print(f"database: {size / 1e6:.1f} MB")
    with store.read() as con:
        for table in ("crawls", "instance_versions", "bucket_versions", "bucket_sizes"):
            count = con.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
            print(f"  {table}: {count[0] if count else 0:,} rows")
    end = START + timedelta(hours=hours)
    t0 = time.perf_counter()
    with store.read() as con:
        verified = verify_history(con)
    print(f"verify: {verified.crawls:,} crawls in {time.perf_counter() - t0:.1f} s "
          f"(chain head {verified.head})")
    pricing = load_pricing()
    for days in (30, 365):
        window = Window(end - timedelta(days=days), end)
        timings = []
        for _ in range(3):
            t0 = time.perf_counter()
            report = build_report(store, window, stale_after=timedelta(days=7),
                                  pending_stale_after=timedelta(hours=1),
                                  max_gap_instances=timedelta(hours=2),
                                  max_gap_buckets=timedelta(minutes=2 * args.bucket_every),
                                  pricing=pricing, now=end)
            timings.append(time.perf_counter() - t0)
        print(f"report --since {days}d: {min(timings) * 1000:.0f} ms (best of 3; "
              f"{len(report.drift):,} drift rows, accrued "
              f"{report.cost.accrued.total:,.2f} {report.cost.currency})")
    # A service crawling hourly commits alone, not in a burst: each commit attaches the
    # file, appends, compacts, checkpoints and detaches. Spaced past the burst linger.
    store.close()
    lone = []
    pages = [instances[i:i + 1000] for i in range(0, len(instances), 1000)]
    for n in range(5):
        time.sleep(LINGER * 1.5)
        lone.append(commit_crawl(store, end + timedelta(hours=n), pages, buckets)[1])
        assert not files.holding(store.path)
    print(f"a lone commit, as an hourly service makes it (attach to detach, staging "
          f"included): median {statistics.median(lone) * 1000:.0f} ms of 5")
    files.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
