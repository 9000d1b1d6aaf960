"""Fleet-scale benchmark (issue 19): every figure and ratio in one run (not a test).

    python bench/scale.py                        # 100,000 instances: a few minutes
    python bench/scale.py --instances 1000000    # the issue's scale (about 10 minutes)
    python bench/scale.py --only sim             # the simulator's figures only
    python bench/scale.py --only read --instances 1000000   # goal 4: 30 days, 1%/day churn

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
3. ``report --since 1h --format json`` over that database: wall and peak RSS.
4. Read side (goal 4, ``--only read``): a history of ``--instances`` and ``--buckets``
   crawled hourly for ``--history-days`` with ``--churn`` of the fleet changing a day
   (``bench/fleet_history.py``: the simulator's fleet, written in bulk as the store would
   hold it, evidence manifests included; ``--via-store`` writes every crawl through the
   store's API instead, about 1.7 s of CPU a crawl at a million), checked by ``nexus-audit
   verify``; then, each in a process of its own: ``report --since 30d --format json``
   (wall, CPU, peak RSS against 3 s and 1 GB); a ``nexus-audit serve`` over it (its API
   URL a closed port, so its own crawls fail and change nothing), scraped ``--scrapes``
   times (p50/p99 against 50 ms, per-instance series off), and scraped again while a
   SIGHUP rebuilds its whole snapshot; and the snapshot rebuild after an instance crawl,
   measured in-process: a ``Service`` over the database (its stale-streak read in a
   worker process, as in ``serve``) rebuilds, one more hourly crawl is committed through
   the store, and ``rebuild_snapshot(kinds=("instances",))`` is timed (against 2 s).
   ``--read-db PATH`` keeps the database there (and reuses it when it exists).

5. Fleet (goal 3, ``--only fleet``): ``--accounts`` accounts of ``--per-account``
   instances in one simulator (``--accounts``: each key its own fleet and rate limit), one
   real ``nexus-audit serve`` with a ``[[accounts]]`` entry and key file per account, the
   interval scaled down from an hour to ``--fleet-interval`` (60 s: an hour over 60; at
   10,000 instances an account's crawl is ~101 requests, inside one window of the default
   budget of 250, so the windows themselves need no scaling, as ``bench/crawl.py`` scales
   them: the budget never binds) and bucket polls every ``--bucket-interval``. While
   ``/metrics`` is scraped ``--scrapes-per-second`` times a second, it measures the time
   for every account to be crawled, per round of the schedule, against the interval;
   serve's peak RSS (``VmHWM``) against 500 MB and its CPU; the scrapes' latency p50/p99
   against 50 ms (all, while instances are crawled, between); and each snapshot rebuild
   (the ``metrics.rebuilt`` log events): seconds, accounts and records folded, against
   the whole fleet.

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
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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

from reference import reference_figure  # noqa: E402 - bench/reference.py, beside this file

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


def load() -> str:
    """The 1-minute load average and the core count."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def line(label: str, value: str) -> None:
    """One aligned result line."""
    print(f"  {label:<48} {value}", flush=True)


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to a child of ours (by its handle), SIGKILL if it is not gone in 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the simulator -------------------------------------------------------------------


@dataclass
class Sim:
    """A simulator process: API URL, key, process, and its start figures."""

    url: str
    key: str
    proc: subprocess.Popen[str]
    start_wall: float
    start_cpu: float
    #: Every account's key (``--accounts``), the first one being ``key``.
    keys: tuple[str, ...] = ()

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
        keys = tuple(proc.stdout.readline().strip() for _ in range(options.get("accounts", 1)))
        if not url.startswith("http"):
            raise RuntimeError(f"simulator did not start: {url!r}")
        yield Sim(url, keys[0], proc, time.perf_counter() - started, cpu_seconds(proc.pid),
                  keys)
    finally:
        stopping = time.perf_counter()
        stop(proc)
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
            print(f"  -- {label}: {r['regions']} previous regions ({load()} after it)")
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


@dataclass
class Measured:
    """A finished child process: wall and CPU seconds, peak RSS, its output."""

    wall: float
    cpu: float
    peak_mb: float
    out: bytes
    err: bytes


def measured(cmd: Sequence[str], env: dict[str, str] | None = None) -> Measured:
    """Run ``cmd`` to its end; wait4 gives its own CPU and peak RSS (not the largest of
    all children). A failure raises with its standard error."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                          out.read(), err.read())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} failed: {result.err.decode()[-2000:]}")
    return result


def read_env(db: Path) -> dict[str, str]:
    """The environment of ``report`` and ``serve`` over a benchmark database: its file,
    a key, its account, an API URL where nothing listens, buckets hourly like the
    history's crawls."""
    env = dict(os.environ, NEXUS_AUDIT_DB=str(db), NEXUS_API_KEY="nx_test_sk_scale",
               NEXUS_API_URL="http://127.0.0.1:9/v2", NEXUS_AUDIT_BUCKET_INTERVAL="1h",
               NEXUS_ACCOUNT="scale")
    env.pop("NEXUS_AUDIT_CONFIG", None)
    return env


def bench_report(db: Path) -> None:
    """``report --since 1h --format json`` over the crawled database."""
    print("\n3. report --since 1h --format json over that database")
    run = measured([sys.executable, "-m", "nexus_audit", "report", "--since", "1h",
                    "--format", "json"], read_env(db))
    report = json.loads(run.out)
    total = report["inventory"]["instances"]["total"]
    line("instances in the report", f"{total:,}")
    line("wall, peak RSS", f"{run.wall:.2f}s, {run.peak_mb:.0f} MB")


# -- the read side (goal 4) ----------------------------------------------------------


def build_child(db: str, instances: int, buckets: int, days: int, churn: float,
                via_store: bool) -> None:
    """In a child process: write the synthetic history; print figures as JSON."""
    from datetime import UTC, datetime

    sys.path.insert(0, str(ROOT / "bench"))
    from fleet_history import FleetHistory, write_in_bulk, write_through_store

    # The history ends at the last full hour, so ``--since 30d`` now covers it.
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    started = time.perf_counter()
    history = FleetHistory(instances=instances, buckets=buckets, days=days, churn=churn,
                           end=end)
    fleet = time.perf_counter() - started
    (write_through_store if via_store else write_in_bulk)(history, Path(db))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"fleet_s": fleet, "wall": time.perf_counter() - started,
                      "cpu": usage.ru_utime + usage.ru_stime,
                      "peak_mb": usage.ru_maxrss / 1024}))


def free_port() -> int:
    """A TCP port free on the loopback now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape_times(url: str, count: int, *, until: Any = None) -> list[float]:
    """Sequential ``GET /metrics`` on one kept-alive connection (as Prometheus scrapes,
    gzip accepted): each one's seconds. With ``until`` (a callable), scrape until it is
    true instead (at least once)."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    times: list[float] = []
    try:
        while len(times) < count if until is None else (not times or not until()):
            started = time.perf_counter()
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            response = conn.getresponse()
            response.read()
            times.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"/metrics answered {response.status}")
    finally:
        conn.close()
    return times


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))]


def wait_idle(pid: int, *, settle: float = 1.0, timeout: float = 600.0) -> None:
    """Until process ``pid`` used under 5% of a core for ``settle`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cpu0 = cpu_seconds(pid)
        time.sleep(settle)
        if cpu_seconds(pid) - cpu0 < 0.05 * settle:
            return
    raise RuntimeError(f"process {pid} did not settle within {timeout:.0f}s")


def bench_serve(db: Path, scrapes: int) -> None:
    """``nexus-audit serve`` over the database: start, /metrics latency, SIGHUP rebuild."""
    import signal
    import threading
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_audit", "serve", "--listen", f"127.0.0.1:{port}",
         "--interval", "1h"], cwd=ROOT, env=read_env(db), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    events: list[tuple[float, dict[str, Any]]] = []

    def read_log() -> None:
        assert proc.stderr is not None
        for text in proc.stderr:
            try:
                events.append((time.perf_counter(), json.loads(text)))
            except ValueError:
                continue

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()

    def logged(event: str, after: float = 0.0) -> float | None:
        return next((t for t, e in list(events) if e.get("event") == event and t >= after),
                    None)

    try:
        deadline = time.monotonic() + 900
        while logged("serve.listening") is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {events[-3:]}")
            time.sleep(0.05)
        listening = (logged("serve.listening") or 0) - started
        rss, peak = rss_mb(proc.pid)
        line("serve start to listening (first snapshot)",
             f"{listening:.1f}s wall, {cpu_seconds(proc.pid):.1f}s CPU, RSS {rss:.0f} MB "
             f"(peak {peak:.0f} MB)")
        # Its crawls of the closed port fail (retried first); each is followed by a rebuild.
        while sum(1 for _, e in list(events) if e.get("event") == "crawl.finished") < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve's first crawls did not finish: {events[-3:]}")
            time.sleep(0.2)
        wait_idle(proc.pid)
        with urllib.request.urlopen(f"{url}/metrics") as answer:  # noqa: S310 - loopback
            body = answer.read().decode()
        shown = sum(float(row.rsplit(" ", 1)[1]) for row in body.splitlines()
                    if row.startswith("nexus_instances{"))
        line("/metrics body", f"{len(body) / 1e3:.0f} kB, nexus_instances sum {shown:,.0f}")
        cpu0 = cpu_seconds(proc.pid)
        times = scrape_times(url, scrapes)
        cpu = cpu_seconds(proc.pid) - cpu0
        p99 = quantile(times, 0.99)
        line(f"/metrics, {scrapes} scrapes (gzip), idle serve",
             f"p50 {quantile(times, 0.5) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max "
             f"{max(times) * 1000:.1f} ms; serve CPU {cpu / len(times) * 1000:.2f} ms a "
             f"scrape  goal p99 < 50 ms: {verdict(p99 < 0.05)}")
        # SIGHUP: serve rebuilds its whole snapshot (every kind) in a worker thread.
        cpu0, sent = cpu_seconds(proc.pid), time.perf_counter()
        proc.send_signal(signal.SIGHUP)
        times = scrape_times(url, 0, until=lambda: logged("serve.reloaded", sent) is not None)
        rebuilt = (logged("serve.reloaded", sent) or sent) - sent
        line("SIGHUP: full snapshot rebuild in serve",
             f"{rebuilt:.2f}s wall, serve CPU {cpu_seconds(proc.pid) - cpu0:.2f}s (its "
             "stale-streak read in a worker process, not counted)")
        line(f"/metrics meanwhile ({len(times)} scrapes)",
             f"p50 {quantile(times, 0.5) * 1000:.1f} ms, p99 "
             f"{quantile(times, 0.99) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
        rss, peak = rss_mb(proc.pid)
        line("serve RSS", f"{rss:.0f} MB (peak {peak:.0f} MB)")
    finally:
        stop(proc)


def children_cpu() -> float:
    """CPU seconds of this process's live children (the rebuild's worker process)."""
    total = 0.0
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def rebuild_child(db: str) -> None:
    """In a child process: the snapshot rebuild after an instance crawl, as JSON figures."""
    from datetime import UTC, datetime, timedelta

    from nexus_audit.config import load_settings
    from nexus_audit.domain.model import CrawlSummary
    from nexus_audit.domain.pricing import load_pricing
    from nexus_audit.domain.timeutil import SystemClock
    from nexus_audit.history.store import Store
    from nexus_audit.service.runtime import Service
    from nexus_audit.service.workers import ReportWorkers

    settings = load_settings(read_env(Path(db)))
    store = Store(db)
    workers = ReportWorkers()
    service = Service(settings, store, load_pricing(None), clock=SystemClock(), grace=0,
                      workers=workers)
    figures: dict[str, Any] = {}
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        service.rebuild_snapshot()
        figures["first_wall"] = time.perf_counter() - wall0
        figures["first_cpu"] = time.process_time() - cpu0
        # One more hourly crawl of the fleet as the last one saw it, 1/24 of 1% changed.
        (state,) = store.latest(("instances",))
        fleet = list(state.instances)
        rng = random.Random(4)
        for k in rng.sample(range(len(fleet)), k=max(1, len(fleet) // 2400)):
            old = fleet[k]
            fleet[k] = old._replace(status="stopped" if old.status == "running" else "running")
        at = datetime.now(UTC)
        wall0 = time.perf_counter()
        staged = store.begin_crawl(state.account, ("instances",), at)
        for n in range(0, len(fleet), 1000):
            staged.add_instances(fleet[n:n + 1000])
        store.commit(staged, CrawlSummary(
            account=state.account, kinds=("instances",), started_at=at,
            finished_at=at + timedelta(seconds=1), status="succeeded",
            instances=len(fleet), requests=len(fleet) // 100 + 1))
        store.close()
        figures["commit_wall"] = time.perf_counter() - wall0
        del fleet, state
        runs = []
        for _ in range(3):
            wall0, cpu0, child0 = time.perf_counter(), time.process_time(), children_cpu()
            snapshot = service.rebuild_snapshot(kinds=("instances",))
            runs.append((time.perf_counter() - wall0, time.process_time() - cpu0,
                         children_cpu() - child0))
        figures["runs"] = runs
        figures["instances"] = sum(t.count for t in snapshot.instances.values())
    finally:
        workers.close()
        if service.rebuild_worker is not None:
            service.rebuild_worker.close()
    figures["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))


def bench_read(args: argparse.Namespace, n: int, buckets: int) -> None:
    """Goal 4: build (or reuse) the history, then report, serve and the rebuild."""
    print(f"\n4. read side: {n:,} instances, {buckets:,} buckets, crawled hourly for "
          f"{args.history_days} days, {args.churn:.1%} of the fleet changing a day")
    with tempfile.TemporaryDirectory(prefix="nexus-read-") as tmp:
        db = Path(args.read_db) if args.read_db else Path(tmp) / "read.duckdb"
        if db.exists():
            line("history", f"reusing {db}")
        else:
            run = measured([sys.executable, __file__, "--build-child", str(db), str(n),
                            str(buckets), str(args.history_days), str(args.churn),
                            "store" if args.via_store else "bulk"])
            built = json.loads(run.out.decode().strip().splitlines()[-1])
            line("history written " + ("through the store" if args.via_store else "in bulk"),
                 f"{run.wall:.1f}s wall ({built['fleet_s']:.1f}s making the fleet), "
                 f"{run.cpu:.1f}s CPU, peak RSS {run.peak_mb:.0f} MB; "
                 f"{db.stat().st_size / 1e6:.0f} MB on disk")
        check = measured([sys.executable, "-m", "nexus_audit", "verify"], read_env(db))
        line("nexus-audit verify", f"{check.out.decode().strip()} ({check.wall:.1f}s wall, "
                                   f"{check.cpu:.1f}s CPU, peak RSS {check.peak_mb:.0f} MB)")
        print(f"  -- report --since 30d --format json ({load()})")
        # The output is parsed once, after the runs: a child's ru_maxrss carries its
        # parent's resident size when it was spawned, so a report run after this process
        # had parsed two read 964 MB for its own 760 (before and after alike).
        for _ in range(args.report_runs):
            run = measured([sys.executable, "-m", "nexus_audit", "report", "--since", "30d",
                            "--format", "json"], read_env(db))
            line("report --since 30d --format json",
                 f"{run.wall:.2f}s wall, {run.cpu:.2f}s CPU, peak RSS {run.peak_mb:.0f} MB  "
                 f"goal < 3 s: {verdict(run.wall < 3)}, < 1 GB: "
                 f"{verdict(run.peak_mb < 1024)}")
        report = json.loads(run.out)
        line("its contents",
             f"{len(run.out) / 1e6:.0f} MB: {report['inventory']['instances']['total']:,} "
             f"instances, {len(report['drift']):,} drift rows, "
             f"{len(report['stale_instances']):,} stale instances, "
             f"{len(report['exposures']):,} exposures, coverage "
             f"{report['crawls']['coverage']['ratio']:.4f}")
        # serve records its failed crawls and the rebuild commits one: both on copies.
        work = Path(tmp) / "work.duckdb"
        print(f"  -- serve ({load()})")
        shutil.copyfile(db, work)
        bench_serve(work, args.scrapes)
        print(f"  -- snapshot rebuild after an instance crawl, in-process ({load()})")
        shutil.copyfile(db, work)
        run = measured([sys.executable, __file__, "--rebuild-child", str(work)])
        r = json.loads(run.out.decode().strip().splitlines()[-1])
        line("first rebuild (every kind, as serve starts)",
             f"{r['first_wall']:.2f}s wall, {r['first_cpu']:.2f}s CPU")
        line("one more hourly crawl committed (this Store's first: in full)",
             f"{r['commit_wall']:.1f}s wall")
        for wall, cpu, child in r["runs"]:
            line("rebuild_snapshot(kinds=('instances',))",
                 f"{wall:.2f}s wall, {cpu:.2f}s CPU + {child:.2f}s in its worker  "
                 f"goal < 2 s: {verdict(wall < 2)}")
        line("instances in the snapshot; the process's peak RSS",
             f"{r['instances']:,}; {r['peak_mb']:.0f} MB")


# -- many accounts in one serve (goal 3) ---------------------------------------------


class ServeProcess:
    """``nexus-audit serve`` over a config file; its JSON log events read as they come."""

    def __init__(self, config: Path, interval: float, bucket_interval: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        env.update({"NEXUS_AUDIT_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nexus_audit", "serve", "--listen", "127.0.0.1:0",
             "--interval", f"{interval:g}s", "--bucket-interval", f"{bucket_interval:g}s"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self.port = 0
        self.cpu = 0.0
        self.peak_mb = 0.0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            event["_at"] = time.time()
            self.events.append(event)
            if event.get("event") == "serve.listening":
                self.port = int(event["port"])

    def named(self, name: str) -> list[dict[str, Any]]:
        """The log events called ``name`` so far."""
        return [e for e in list(self.events) if e.get("event") == name]

    def alive(self) -> None:
        """Raise if serve has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited with {self.proc.returncode}: "
                               f"{[e for e in self.events if e.get('level') == 'error'][-3:]}")

    def stop(self) -> None:
        """Note its CPU and peak RSS, then stop it (:func:`stop`)."""
        if self.proc.poll() is None:
            self.cpu = cpu_seconds(self.proc.pid)
            self.peak_mb = rss_mb(self.proc.pid)[1]
        stop(self.proc)


def fleet_config(tmp: Path, sim: Sim, budget: int) -> tuple[Path, list[str]]:
    """A config file with one ``[[accounts]]`` and key file per simulator key."""
    names = [f"acct-{i:03d}" for i in range(len(sim.keys))]
    keys = tmp / "keys"
    keys.mkdir(mode=0o700)
    rows = [f'db = "{tmp / "fleet.duckdb"}"', f"rate_budget = {budget}",
            f'api_url = "{sim.url}"', ""]
    for name, key in zip(names, sim.keys, strict=True):
        path = keys / name
        path.write_text(key + "\n")
        path.chmod(0o600)
        rows += ["[[accounts]]", f'name = "{name}"', f'api_key_file = "{path}"', ""]
    config = tmp / "nexus-audit.toml"
    config.write_text("\n".join(rows))
    return config, names


async def scrape(port: int, per_second: float,
                 until: Callable[[], bool]) -> list[tuple[float, float]]:
    """Scrape /metrics ``per_second`` times a second (one after the other) until
    ``until()``; each scrape's start (unix seconds) and seconds."""
    seconds: list[tuple[float, float]] = []
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session:
        while not until():
            at, started = time.time(), time.perf_counter()
            async with session.get(url) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"/metrics answered {resp.status}")
            took = time.perf_counter() - started
            seconds.append((at, took))
            await asyncio.sleep(max(0.0, 1 / per_second - took))
    return seconds


def rounds_of(events: list[dict[str, Any]], names: list[str]) -> list[tuple[float, float]]:
    """Per round of the schedule (each account's n-th successful instance crawl): when its
    first crawl started and its last one finished (unix seconds), for complete rounds."""
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for e in events:
        if e.get("status") == "succeeded" and "instances" in e.get("kinds", ()):
            runs[e["account"]].append((e["_at"] - float(e["seconds"]), e["_at"]))
    complete = min(len(r) for r in runs.values())
    return [(min(r[i][0] for r in runs.values()), max(r[i][1] for r in runs.values()))
            for i in range(complete)]


def bench_fleet(accounts: int, per_account: int, budget: int, interval: float,
                bucket_interval: float, rounds: int, per_second: float) -> None:
    """Goal 3: ``accounts`` accounts in one serve, each its own key."""
    fleet = accounts * per_account
    buckets = max(1, per_account // 200)
    print(f"\n5. fleet: {accounts} accounts x {per_account:,} instances ({fleet:,}) and "
          f"{buckets} buckets each, one key each, budget {budget}/min per key; serve's "
          f"interval {interval:g}s, bucket polls every {bucket_interval:g}s")
    with simulator(per_account, buckets, accounts=accounts) as sim, \
            tempfile.TemporaryDirectory() as tmp:
        line("simulator start", f"{sim.start_wall:.1f}s wall, {sim.start_cpu:.1f}s CPU, "
                                f"RSS {rss_mb(sim.pid)[0]:.0f} MB")
        config, names = fleet_config(Path(tmp), sim, budget)
        sim_cpu0 = cpu_seconds(sim.pid)
        serve = ServeProcess(config, interval, bucket_interval)
        try:
            while not serve.port:
                serve.alive()
                time.sleep(0.05)

            load_during = [os.getloadavg()[0]]

            def done() -> bool:
                serve.alive()
                load_during.append(os.getloadavg()[0])
                return len(rounds_of(serve.named("crawl.finished"), names)) >= rounds

            scrapes = asyncio.run(scrape(serve.port, per_second, done))
        finally:
            serve.stop()
        sim_cpu = cpu_seconds(sim.pid) - sim_cpu0
    wall = time.time() - serve.started
    finished = serve.named("crawl.finished")
    failed = [e for e in finished if e.get("status") != "succeeded"]
    for n, (first, last) in enumerate(rounds_of(finished, names)[:rounds]):
        took = last - first
        line(f"round {n + 1}: every account's instances crawled",
             f"{took:.1f}s from the first start to the last commit; interval {interval:g}s: "
             f"{took / interval:.2f} of it  goal <= 1: {verdict(took <= interval)}")
    codes = Counter(str(e.get("error_code")) for e in failed)
    line("crawls (failed: codes), skipped runs",
         f"{len(finished)} ({len(failed)}: {dict(codes)}), {len(serve.named('crawl.skipped'))}")
    line("serve peak RSS (VmHWM)", f"{serve.peak_mb:.0f} MB  goal <= 500 MB: "
                                   f"{verdict(serve.peak_mb <= 500)}")
    line("serve CPU / simulator CPU",
         f"{serve.cpu:.1f}s / {sim_cpu:.1f}s in {wall:.0f}s of wall "
         f"({100 * serve.cpu / wall:.0f}% / {100 * sim_cpu / wall:.0f}% of a core)")
    busy = [(e["_at"] - float(e["seconds"]), e["_at"]) for e in finished
            if "instances" in e.get("kinds", ())]
    during = [t for at, t in scrapes if any(a <= at <= b for a, b in busy)]
    for label, chosen in (("all", [t for _, t in scrapes]), ("while instances are crawled", during),
                          ("between instance crawls",
                           [t for at, t in scrapes if not any(a <= at <= b for a, b in busy)])):
        if not chosen:
            continue
        p50, p99 = quantile(chosen, 0.5), quantile(chosen, 0.99)
        line(f"/metrics latency, {label} ({len(chosen)})",
             f"p50 {1000 * p50:.1f} ms, p99 {1000 * p99:.1f} ms, max {1000 * max(chosen):.0f} ms"
             f"  goal p99 < 50 ms: {verdict(p99 < 0.05)}")
    rebuilt = serve.named("metrics.rebuilt")[1:]  # the first, at start-up, is of nothing
    if rebuilt:
        secs = [float(e["seconds"]) for e in rebuilt]
        folded = [int(e["records"]) for e in rebuilt]
        per = [len(a) if isinstance(a, list) else int(a)
               for a in (e["accounts"] for e in rebuilt)]
        line(f"snapshot rebuilds ({len(rebuilt)}, for {len(finished)} commits)",
             f"p50 {1000 * quantile(secs, 0.5):.0f} ms, p99 "
             f"{1000 * quantile(secs, 0.99):.0f} ms, max {1000 * max(secs):.0f} ms")
        line("accounts / records folded per rebuild",
             f"mean {sum(per) / len(per):.1f} of {accounts} accounts; mean "
             f"{sum(folded) / len(folded):,.0f} records, max {max(folded):,} of "
             f"{fleet + accounts * buckets:,} in the fleet")
    line("load average during the run (1 min)",
         f"{min(load_during):.2f} to {max(load_during):.2f}")


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
    parser.add_argument("--only", choices=["sim", "crawl", "read", "fleet"], action="append")
    parser.add_argument("--history-days", type=int, default=30, help="read side: days")
    parser.add_argument("--churn", type=float, default=0.01,
                        help="read side: share of the fleet changing a day")
    parser.add_argument("--via-store", action="store_true",
                        help="read side: write every crawl through the store's API")
    parser.add_argument("--read-db", help="read side: keep (or reuse) the database here")
    parser.add_argument("--scrapes", type=int, default=1000, help="read side: /metrics")
    parser.add_argument("--report-runs", type=int, default=2, help="read side: reports")
    parser.add_argument("--accounts", type=int, default=100, help="fleet: accounts")
    parser.add_argument("--per-account", type=int, default=10_000,
                        help="fleet: instances per account")
    parser.add_argument("--fleet-interval", type=float, default=60.0,
                        help="fleet: serve's instance interval, seconds (an hour / 60)")
    parser.add_argument("--bucket-interval", type=float, default=60.0,
                        help="fleet: serve's bucket interval, seconds")
    parser.add_argument("--fleet-budget", type=int, default=250,
                        help="fleet: each key's budget, requests a minute (real windows)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="fleet: rounds of instance crawls to wait for")
    parser.add_argument("--scrapes-per-second", type=float, default=2.0)
    parser.add_argument("--crawl-child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--build-child", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--rebuild-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.crawl_child:
        url, key, db, per_minute, window = args.crawl_child
        crawl_child(url, key, db, int(per_minute), float(window))
        return
    if args.build_child:
        db, n, b, days, churn, how = args.build_child
        build_child(db, int(n), int(b), int(days), float(churn), how == "store")
        return
    if args.rebuild_child:
        rebuild_child(args.rebuild_child)
        return
    n = args.instances
    buckets = args.buckets if args.buckets is not None else max(1, n // 200)
    only = set(args.only or ["sim", "crawl", "read", "fleet"])
    print(f"nexus-audit scale benchmark; python {sys.version.split()[0]}, {load()}")
    reference_figure()
    if "sim" in only:
        bench_simulator(n, buckets, args.seconds)
    if "crawl" in only:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "scale.duckdb"
            bench_crawl(n, buckets, args.budget, args.window, db)
            bench_report(db)
    if "read" in only:
        bench_read(args, n, buckets)
    if "fleet" in only:
        bench_fleet(args.accounts, args.per_account, args.fleet_budget,
                    args.fleet_interval, args.bucket_interval, args.rounds,
                    args.scrapes_per_second)
    print(f"\nend: {load()}")
    reference_figure()


if __name__ == "__main__":
    main()
