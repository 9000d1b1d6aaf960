"""Fleet-scale benchmark (issue 19): every figure and ratio in one run (not a test).

    python bench/scale.py                        # 100,000 instances: a few minutes
    python bench/scale.py --instances 1000000    # the issue's scale (about 10 minutes)
    python bench/scale.py --only sim             # the simulator's figures only

Each process runs apart, so the figures are its own: the simulator (``python -m
nexus_audit.simulator``), the crawler (this script in a child process, with the DuckDB
store), the report (``python -m nexus_audit report``). CPU seconds come from the kernel
(``/proc/PID/stat``, ``wait4``), peak RSS from ``VmHWM`` / ``ru_maxrss``.

1. Simulator (goal 1): start time and RSS at ``--instances`` and at a tenth of it; pages
   per second, unfiltered and filtered (region, region + status, status, a tag), by
   concurrent cursor chains from this process, with the simulator's CPU time over the
   same interval (pages per simulator CPU-second is the one-core capacity).
2. Crawl (goal 2): a first crawl (one cursor chain: no previous regions) and a second
   (region fan-out from the first's regions), each committed to DuckDB in a child
   process. The server's limit and our budget are both ``--budget`` a minute with the
   windows scaled to ``--window`` seconds, as in ``bench/crawl.py``, so the budget
   binds: wall / (requests / budget) against 1.05; peak RSS including the commit against
   400 MB; crawler CPU against 40 s; and the simulator's CPU share during each crawl.
3. Read side (goal 4, in part): ``report --since 1h --format json`` over that database:
   wall and peak RSS.

Goals 3 (100 accounts in one ``serve``) and the rest of 4 (30 days of hourly history at
a million instances) are not measured here.

The host is shared and may be slow: every section prints CPU seconds next to wall
seconds, the load average, and a reference figure measured in the same run (a fixed
pure-Python workload), so figures from different runs can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

from nexus_audit.logs import configure_logging  # noqa: E402

# Errors only: the figures are the output.
configure_logging(json=True, level=40)

from nexus_audit.simulator.fleet import REGIONS  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024


# -- measuring processes -------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> tuple[float, float]:
    """Current and peak resident set size of a running process, in MB."""
    status = {}
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = row.partition(":")
        status[name] = value
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def reference_figure() -> float:
    """A fixed pure-Python workload (dicts, strings, sorting), in runs per second."""
    started = time.process_time()
    wall = time.perf_counter()
    rng = random.Random(1)
    for _ in range(3):
        table = {f"inst_{rng.getrandbits(40):010x}": i for i in range(100_000)}
        sorted(table)
    cpu = time.process_time() - started
    print(f"  reference workload: {3 / cpu:.2f} runs per CPU-second "
          f"({time.perf_counter() - wall:.2f}s wall for {cpu:.2f}s CPU)")
    return 3 / cpu


def load() -> str:
    """The 1-minute load average and the core count."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def line(label: str, value: str) -> None:
    """One aligned result line."""
    print(f"  {label:<48} {value}", flush=True)


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


# -- the simulator -------------------------------------------------------------------


@dataclass
class Sim:
    """A simulator process: API URL, key, process, and its start figures."""

    url: str
    key: str
    proc: subprocess.Popen[str]
    start_wall: float
    start_cpu: float

    @property
    def pid(self) -> int:
        """The simulator's process id."""
        return self.proc.pid


@contextmanager
def simulator(instances: int, buckets: int, **options: Any) -> Iterator[Sim]:
    """``python -m nexus_audit.simulator --port 0``; stopped by its pid (SIGTERM)."""
    cmd = [sys.executable, "-m", "nexus_audit.simulator", "--port", "0",
           "--instances", str(instances), "--buckets", str(buckets)]
    for name, value in options.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        key = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"simulator did not start: {url!r}")
        yield Sim(url, key, proc, time.perf_counter() - started, cpu_seconds(proc.pid))
    finally:
        stopping = time.perf_counter()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stopped = time.perf_counter() - stopping
        if stopped > 2:
            print(f"  (the simulator took {stopped:.1f}s to stop on SIGTERM)")


async def chains(sim: Sim, filters: Sequence[dict[str, str]], seconds: float) -> int:
    """Walk cursor chains, one per filter set, for ``seconds``; the pages received."""
    pages = 0
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {sim.key}"}

    async def walk(session: aiohttp.ClientSession, base: dict[str, str]) -> None:
        nonlocal pages
        params = dict(base, limit="100")
        first = True  # every chain gets at least one page
        while first or time.perf_counter() < deadline:
            first = False
            async with session.get(f"{sim.url}/instances", params=params) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"page failed: {resp.status} {await resp.text()}")
                body = await resp.json()
            pages += 1
            cursor = body["pagination"]["next_cursor"]
            if cursor:
                params["cursor"] = cursor
            else:
                params.pop("cursor", None)

    connector = aiohttp.TCPConnector(limit=len(filters))
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        await asyncio.gather(*(walk(session, f) for f in filters))
    return pages


def bench_simulator(n: int, buckets: int, seconds: float) -> None:
    """Goal 1: start time and RSS, then pages per second."""
    print(f"\n1. simulator: {n:,} instances, {buckets:,} buckets")
    for size in (max(1, n // 10), n):
        with simulator(size, max(1, buckets * size // n), rate_limit=10**9) as sim:
            rss, peak = rss_mb(sim.pid)
            goal = f"  goal < 15 s: {verdict(sim.start_wall < 15)}" if size >= 1_000_000 else ""
            line(f"start with {size:,} instances",
                 f"{sim.start_wall:.1f}s wall, {sim.start_cpu:.1f}s CPU, RSS {rss:.0f} MB "
                 f"(peak {peak:.0f} MB){goal}")
            if size != n:
                continue
            stat = sorted(("running", "stopped", "pending"))
            cases: list[tuple[str, list[dict[str, str]]]] = [
                ("unfiltered (4 chains)", [{}] * 4),
                ("region (8 chains)", [{"region": r} for r in REGIONS]),
                ("region + status (8 chains)",
                 [{"region": r, "status": "running"} for r in REGIONS]),
                ("status (3 chains)", [{"status": s} for s in stat]),
                ("tag env:prod + region (4 chains)",
                 [{"tags": "env:prod", "region": r} for r in REGIONS[:4]]),
            ]
            for label, filters in cases:
                # The first page of each filter set apart: a tag filter set builds its
                # index then (one pass over the region/status index it narrows).
                cpu0, wall0 = cpu_seconds(sim.pid), time.perf_counter()
                asyncio.run(chains(sim, filters, 0))
                first = time.perf_counter() - wall0
                if "tag" in label:
                    line(f"first pages, {label}",
                         f"{first:.2f}s wall, simulator CPU {cpu_seconds(sim.pid) - cpu0:.2f}s")
                cpu0, wall0 = cpu_seconds(sim.pid), time.perf_counter()
                pages = asyncio.run(chains(sim, filters, seconds))
                wall, cpu = time.perf_counter() - wall0, cpu_seconds(sim.pid) - cpu0
                per_cpu = pages / cpu if cpu else float("inf")
                line(f"pages/s, {label}",
                     f"{pages / wall:.0f}/s wall; simulator CPU {100 * cpu / wall:.0f}%, "
                     f"{per_cpu:.0f} pages per CPU-second  goal >= 500: "
                     f"{verdict(per_cpu >= 500)}")
            rss, peak = rss_mb(sim.pid)
            line("simulator RSS after the page runs", f"{rss:.0f} MB (peak {peak:.0f} MB)")


# -- the crawler (in a child process) ------------------------------------------------


def crawl_child(url: str, key: str, db: str, per_minute: int, window: float) -> None:
    """In a child process: crawl into the store, commit, print figures as JSON."""
    from datetime import UTC, datetime

    from nexus_audit.api import ApiStats, CloudNexusClient, RateBudget
    from nexus_audit.config import AccountConfig, Secret
    from nexus_audit.crawl.crawler import crawl_account
    from nexus_audit.domain.timeutil import SystemClock
    from nexus_audit.history.store import Store

    async def main() -> dict[str, Any]:
        clock = SystemClock()
        store = Store(db)
        store.migrate()
        regions = store.previous_regions("scale")
        staged = store.begin_crawl("scale", ("instances", "buckets"), datetime.now(UTC))
        account = AccountConfig(name="scale", api_url=url, api_key=Secret(key),
                                rate_budget=per_minute)
        async with aiohttp.ClientSession() as session:
            client = CloudNexusClient(account, session,
                                      RateBudget(per_minute, clock=clock, window=window),
                                      stats=ApiStats(), timeout=60.0, clock=clock)
            cpu0, started = time.process_time(), time.perf_counter()
            summary = await crawl_account(client, "scale", staged, previous_regions=regions,
                                          clock=clock)
            wall = time.perf_counter() - started
            crawl_cpu = time.process_time() - cpu0
        crawl_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        committed = time.perf_counter()
        if summary.status == "succeeded":
            store.commit(staged, summary)
        commit = time.perf_counter() - committed
        store.close()
        return {"status": summary.status, "error": str(summary.error or ""),
                "instances": summary.instances, "requests": summary.requests,
                "regions": len(regions), "wall": wall, "crawl_cpu": crawl_cpu,
                "commit": commit, "crawl_peak_rss_mb": crawl_peak}

    result = asyncio.run(main())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu"] = usage.ru_utime + usage.ru_stime
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    print(json.dumps(result))


def run_crawl(sim: Sim, db: Path, per_minute: int, window: float) -> dict[str, Any]:
    """One crawl in a child process; its figures and the simulator's CPU meanwhile."""
    cpu0 = cpu_seconds(sim.pid)
    wall0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--crawl-child", sim.url, sim.key, str(db),
         str(per_minute), str(window)],
        cwd=ROOT, capture_output=True, text=True, timeout=7200, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"crawl child failed: {out.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["sim_cpu"] = cpu_seconds(sim.pid) - cpu0
    result["child_wall"] = time.perf_counter() - wall0
    return result


def bench_crawl(n: int, buckets: int, per_minute: int, window: float, db: Path) -> None:
    """Goal 2: first crawl (one chain) and second (region fan-out), each committed."""
    limit = max(1, round(per_minute * window / 60))
    print(f"\n2. crawl: {n:,} instances, {buckets:,} buckets; server limit and our budget "
          f"{per_minute}/min, windows scaled to {window:g}s ({limit} requests per window)")
    with simulator(n, buckets, rate_limit=limit, rate_window=window) as sim:
        for label in ("first crawl (one cursor chain)", "second crawl (region fan-out)"):
            r = run_crawl(sim, db, per_minute, window)
            if r["status"] != "succeeded" or r["instances"] != n:
                raise RuntimeError(f"{label} incomplete: {r}")
            ideal = r["requests"] / (per_minute / 60)
            ratio = r["wall"] / ideal
            print(f"  -- {label}: {r['regions']} previous regions")
            line("instances / requests", f"{r['instances']:,} / {r['requests']:,}")
            line("wall / (requests / budget)",
                 f"{r['wall']:.1f}s / {ideal:.1f}s = {ratio:.2f}  goal <= 1.05: "
                 f"{verdict(ratio <= 1.05)}")
            line("commit", f"{r['commit']:.1f}s")
            line("peak RSS, crawl + commit (before the commit)",
                 f"{r['peak_rss_mb']:.0f} MB ({r['crawl_peak_rss_mb']:.0f} MB)  goal <= 400 MB: "
                 f"{verdict(r['peak_rss_mb'] <= 400)}")
            line("crawler CPU (crawl; whole process with commit)",
                 f"{r['crawl_cpu']:.1f}s; {r['cpu']:.1f}s  goal <= 40 s: "
                 f"{verdict(r['cpu'] <= 40)}")
            line("simulator CPU during the child",
                 f"{r['sim_cpu']:.1f}s in {r['child_wall']:.1f}s "
                 f"({100 * r['sim_cpu'] / r['child_wall']:.0f}% of one core)")
            # One chain's pages are sequential, so client and server CPU add up; chains in
            # parallel overlap them (two cores). Below the budget's time, a host with
            # those cores free would be budget-bound.
            cpus = (r["crawl_cpu"], r["sim_cpu"])
            floor = sum(cpus) if r["regions"] == 0 else max(cpus)
            line("CPU floor of the crawl (crawler + simulator CPU)",
                 f"{floor:.1f}s vs {ideal:.1f}s at the budget: "
                 f"{'budget-bound' if floor < ideal else 'CPU-bound'} on an idle host")


def bench_report(db: Path) -> None:
    """``report --since 1h --format json`` over the crawled database."""
    print("\n3. report --since 1h --format json over that database")
    env = dict(os.environ, NEXUS_AUDIT_DB=str(db), NEXUS_API_KEY="nx_test_sk_scale",
               NEXUS_API_URL="http://127.0.0.1:9/v2")
    env.pop("NEXUS_AUDIT_CONFIG", None)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus_audit", "report", "--since", "1h", "--format",
             "json"], cwd=ROOT, env=env, stdout=out, stderr=err)
        # wait4 gives this child's own peak RSS (not the largest of all children).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"report failed: {err.read().decode()[-2000:]}")
        report = json.loads(out.read())
    total = report["inventory"]["instances"]["total"]
    line("instances in the report", f"{total:,}")
    line("wall, peak RSS", f"{wall:.2f}s, {usage.ru_maxrss / 1024:.0f} MB")


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--buckets", type=int, default=None,
                        help="default: one per 200 instances (5,000 at a million)")
    parser.add_argument("--budget", type=int, default=6000, help="requests a minute")
    parser.add_argument("--window", type=float, default=1.0,
                        help="rate windows scaled to this many seconds (as bench/crawl.py)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per page-rate case")
    parser.add_argument("--only", choices=["sim", "crawl"], action="append")
    parser.add_argument("--crawl-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.crawl_child:
        url, key, db, per_minute, window = args.crawl_child
        crawl_child(url, key, db, int(per_minute), float(window))
        return
    n = args.instances
    buckets = args.buckets if args.buckets is not None else max(1, n // 200)
    only = set(args.only or ["sim", "crawl"])
    print(f"nexus-audit scale benchmark; python {sys.version.split()[0]}, {load()}")
    reference_figure()
    if "sim" in only:
        bench_simulator(n, buckets, args.seconds)
    if "crawl" in only:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "scale.duckdb"
            bench_crawl(n, buckets, args.budget, args.window, db)
            bench_report(db)
    print(f"\nend: {load()}")
    reference_figure()


if __name__ == "__main__":
    main()
