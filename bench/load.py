"""Load benchmark: /metrics and /report under concurrent clients while crawls commit.

Starts the simulator (in this process, on loopback, with churn) and a real ``nexus-audit
serve`` child process that crawls it on short intervals with a rate budget small enough to
bind; waits until serve is ready; then loads it for ``--seconds``, in one of two modes:

- ``--mode mixed`` (the default, the original benchmark): 50 clients alternately scrape
  ``GET /metrics`` and fetch ``GET /report`` (three query variants, so identical queries
  share a computation).
- ``--mode distinct``: 20 clients each ask ``/report`` for a window of their own (client
  ``i`` asks ``since={first + i}d``, never shared with another client), back to back; a
  refusal (503/429) is waited out for its ``Retry-After`` and counted, not an error.
  Beside them one prober, a process of its own, scrapes ``/metrics`` (gzip) every 50 ms,
  as Prometheus would, so its latency is the exporter's, not a queue of 50 scrapers' nor
  the load generator's. Use ``--history-days 60
  --instances 5000`` to give the reports a long history to chew on (written into the
  database through the store's API before serve starts: hourly crawls of the whole fleet).

Prints, per endpoint, requests, refusals, errors and latency p50/p99/max, the crawls
committed during the run, the bucket-poll spacing (between successive bucket polls'
``crawl.finished`` lines) against the interval, the ratio of each figure against the goals
(``/metrics`` p99 < 50 ms, spacing <= 1.2 x the interval), and from the simulator's own
request log the most API requests in any 60-second window against the budget (no crawl may
be pushed past it). Exits 1 on any error or budget overrun (missed goals are printed, not
failed: the figures are the point).

Usage: ``.venv/bin/python bench/load.py [--mode mixed|distinct] [--seconds 30]
[--clients N] [--budget 250] [--bucket-interval 2s] [--instances 2000] [--history-days D]``;
the issue's case: ``--mode distinct --history-days 60 --instances 5000``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.util
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import aiohttp

from nexus_audit.domain.model import CrawlSummary
from nexus_audit.history.store import Store
from nexus_audit.simulator import SimulatorConfig, SimulatorThread

REPO = Path(__file__).resolve().parents[1]
REPORT_QUERIES = ("/report?since=1h", "/report?since=30m&account=default",
                  "/report?since=2h&stale_after=1h")
BUDGET_WINDOW = 60.0
#: The goals of issue 17 item 7, while 20 clients request distinct windows.
GOAL_METRICS_P99_MS = 50.0
GOAL_SPACING_RATIO = 1.2
#: How often the distinct mode's prober scrapes /metrics.
PROBE_EVERY = 0.05


@dataclass
class Stats:
    """Latencies (seconds) and errors of one endpoint."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Answers 503/429 with Retry-After (the report bound at work), not errors.
    refused: int = 0
    #: (monotonic time, seconds) of each answer slower than the goal (/metrics, distinct).
    slow: list[tuple[float, float]] = field(default_factory=list)


class Serve:
    """A ``nexus-audit serve`` child process; its port is read from its log."""

    def __init__(self, sim: SimulatorThread, db: Path, budget: int, bucket_interval: str,
                 log: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        env.update({"NEXUS_API_URL": sim.url, "NEXUS_API_KEY": sim.key,
                    "NEXUS_AUDIT_DB": str(db), "NEXUS_RATE_BUDGET": str(budget),
                    "PYTHONUNBUFFERED": "1"})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nexus_audit", "serve", "--listen", "127.0.0.1:0",
             "--interval", "3s", "--bucket-interval", bucket_interval],
            cwd=db.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.events: list[dict[str, object]] = []
        self.log = log.open("wb") if log is not None else None
        self.port = 0
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            if self.log is not None:
                self.log.write(raw)
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            event["_read_at"] = time.monotonic()
            self.events.append(event)
            if event.get("event") == "serve.listening":
                self.port = int(str(event["port"]))
                self._ready.set()

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Block until serve listens (raises if it exits first)."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve did not start (exit {self.proc.poll()})")

    def stop(self) -> int:
        """SIGTERM by pid, then wait; SIGKILL if it does not stop."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


def wait_first_crawls(serve: Serve, timeout: float = 90.0) -> None:
    """Block until an instance crawl and a bucket crawl have succeeded (history exists).

    Not /readyz: with a budget that binds, instance crawls may take longer than twice
    their 3-second interval, and readiness would rightly stay false.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = {str(kind) for event in list(serve.events)
                if event.get("event") == "crawl.finished" and event.get("status") == "succeeded"
                for kind in event.get("kinds", []) or []}  # type: ignore[union-attr]
        if {"instances", "buckets"} <= done:
            return
        if serve.proc.poll() is not None:
            raise SystemExit(f"serve exited with {serve.proc.returncode}")
        time.sleep(0.1)
    raise SystemExit("no instance and bucket crawl succeeded in time")


async def client(session: aiohttp.ClientSession, base: str, index: int, stop_at: float,
                 stats: dict[str, Stats]) -> None:
    """One client: alternately scrape /metrics and fetch a report until ``stop_at``."""
    turn = index
    while time.monotonic() < stop_at:
        path = "/metrics" if turn % 2 == 0 else REPORT_QUERIES[(turn // 2) % 3]
        name = path.split("?")[0]
        turn += 1
        started = time.perf_counter()
        try:
            async with session.get(base + path) as response:
                body = await response.read()
                if response.status in (429, 503) and "Retry-After" in response.headers:
                    stats[name].refused += 1  # the report bound at work, not an error
                    continue
                if response.status != 200:
                    stats[name].errors.append(f"{path}: HTTP {response.status} {body[:200]!r}")
                    continue
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats[name].errors.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        stats[name].latencies.append(time.perf_counter() - started)


async def hammer(base: str, clients: int, seconds: float) -> dict[str, Stats]:
    """Run ``clients`` concurrent clients for ``seconds``."""
    stats = {"/metrics": Stats(), "/report": Stats()}
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session, base, i, stop_at, stats)
                               for i in range(clients)))
    return stats


async def distinct_client(session: aiohttp.ClientSession, base: str, since: str,
                          stop_at: float, stats: Stats) -> None:
    """One client asking ``/report?since=<its own window>`` back to back until ``stop_at``;
    a 503/429 is waited out for its ``Retry-After`` (at most until ``stop_at``)."""
    path = f"/report?since={since}"
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        try:
            async with session.get(base + path) as response:
                body = await response.read()
                if response.status in (429, 503) and "Retry-After" in response.headers:
                    stats.refused += 1
                    wait = float(response.headers["Retry-After"]) * random.uniform(0.5, 1.0)
                    await asyncio.sleep(min(wait, max(0.0, stop_at - time.monotonic())))
                    continue
                if response.status != 200:
                    stats.errors.append(f"{path}: HTTP {response.status} {body[:200]!r}")
                    continue
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats.errors.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        stats.latencies.append(time.perf_counter() - started)


def probe_main(url: str, seconds: float) -> int:
    """``--probe``: scrape ``url`` every :data:`PROBE_EVERY` seconds for ``seconds`` with
    the standard library, then print ``{"latencies": [...], "errors": [...]}``.

    Run as a process of its own: in the load generator's process the scrapes would queue
    behind 20 clients' megabytes of report bodies and the simulator for the GIL, and their
    latency would be the generator's, not the exporter's.
    """
    parsed = urllib.parse.urlsplit(url)
    latencies: list[float] = []
    errors: list[str] = []
    #: (monotonic time, seconds) of each scrape slower than the goal.
    slow: list[tuple[float, float]] = []
    stop_at = time.monotonic() + seconds
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port,
                                            timeout=60)
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        try:
            connection.request("GET", parsed.path, headers={"Accept-Encoding": "gzip"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                errors.append(f"/metrics: HTTP {response.status}")
            else:
                latencies.append(time.perf_counter() - started)
                if latencies[-1] > GOAL_METRICS_P99_MS / 1000:
                    slow.append((time.monotonic(), latencies[-1]))
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"/metrics: {type(exc).__name__}: {exc}")
            connection.close()
        time.sleep(max(0.0, PROBE_EVERY - (time.perf_counter() - started)))
    print(json.dumps({"latencies": latencies, "errors": errors, "slow": slow}))
    return 0


def distinct_windows(clients: int, history_days: int) -> list[str]:
    """One ``since`` per client, all different (hours back from a day, or the history)."""
    hours = max(1, history_days) * 24
    return [f"{max(1, hours - i)}h" for i in range(clients)]


async def hammer_distinct(base: str, windows: list[str], seconds: float) -> Stats:
    """One client per window for ``seconds``."""
    stats = Stats()
    stop_at = time.monotonic() + seconds
    # One connection per client: nobody waits for a free connection.
    connector = aiohttp.TCPConnector(limit=len(windows))
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(distinct_client(session, base, since, stop_at, stats)
                               for since in windows))
    return stats


def run_distinct(base: str, windows: list[str], seconds: float) -> dict[str, Stats]:
    """The distinct-windows load plus the /metrics prober in a process of its own."""
    prober = subprocess.Popen([sys.executable, __file__, "--probe", base + "/metrics",
                               "--seconds", str(seconds)], stdout=subprocess.PIPE)
    try:
        reports = asyncio.run(hammer_distinct(base, windows, seconds))
        out, _ = prober.communicate(timeout=120)
    finally:
        if prober.poll() is None:
            os.kill(prober.pid, signal.SIGKILL)
            prober.wait()
    probed = json.loads(out)
    return {"/metrics": Stats(latencies=probed["latencies"], errors=probed["errors"],
                              slow=probed["slow"]),
            "/report": reports}


def _history_module() -> ModuleType:
    """``bench/history.py`` (its synthetic fleet), loaded by path: bench is no package."""
    spec = importlib.util.spec_from_file_location("bench_history",
                                                  Path(__file__).with_name("history.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_history(db: Path, days: int, instances: int, buckets: int) -> int:
    """Write ``days`` of hourly crawls (both kinds, 1% churn a day) of account ``default``
    into ``db``, ending an hour ago; the crawls written."""
    history = _history_module()
    rng = random.Random(7)
    fleet = [history.make_instance(rng, n) for n in range(instances)]
    pool = [history.make_bucket(rng, n) for n in range(buckets)]
    store = Store(db)
    store.migrate()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days, hours=1)
    next_i = instances
    churn = max(1, instances // 100)
    for hour in range(days * 24):
        for _ in range(churn // 24 + (1 if rng.random() < (churn % 24) / 24 else 0)):
            k = rng.randrange(len(fleet))
            if rng.random() < 0.5:
                fleet[k] = history.make_instance(rng, next_i)
                next_i += 1
            else:
                old = fleet[k]
                fleet[k] = old._replace(
                    status="stopped" if old.status == "running" else "running")
        at = start + timedelta(hours=hour)
        staged = store.begin_crawl("default", ("instances", "buckets"), at)
        for i in range(0, len(fleet), 1000):
            staged.add_instances(fleet[i:i + 1000])
        staged.add_buckets(pool)
        store.commit(staged, CrawlSummary(
            account="default", kinds=("instances", "buckets"), started_at=at,
            finished_at=at + timedelta(seconds=40), status="succeeded",
            instances=len(fleet), buckets=len(pool), requests=len(fleet) // 100 + 1))
    store.close()
    return days * 24


def poll_durations(serve: Serve, since: float) -> list[float]:
    """How long each bucket poll finishing after ``since`` took (its own ``seconds``)."""
    return [float(str(e["seconds"])) for e in list(serve.events)
            if e.get("event") == "crawl.finished" and e.get("kinds") == ["buckets"]
            and float(str(e["_read_at"])) >= since]


def poll_spacing(serve: Serve, since: float) -> list[float]:
    """Seconds between successive successful bucket polls finishing after ``since``."""
    times = [float(str(e["_read_at"])) for e in list(serve.events)
             if e.get("event") == "crawl.finished" and e.get("status") == "succeeded"
             and e.get("kinds") == ["buckets"] and float(str(e["_read_at"])) >= since]
    return [b - a for a, b in itertools.pairwise(times)]


def max_in_window(times: list[float], window: float) -> int:
    """The most requests the server received inside any ``window`` seconds."""
    ordered = sorted(times)
    return max((bisect_right(ordered, t + window - 1e-6) - i for i, t in enumerate(ordered)),
               default=0)


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, in milliseconds."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1] * 1000


def crawls_finished(serve: Serve) -> dict[str, int]:
    """crawl.finished events so far, by ``kinds:status``."""
    counts: dict[str, int] = {}
    for event in list(serve.events):
        if event.get("event") == "crawl.finished":
            kinds = ",".join(str(k) for k in event.get("kinds", []) or [])  # type: ignore[union-attr]
            key = f"{kinds}:{event.get('status')}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def main() -> int:
    """Run the benchmark; 0 when there were no errors and the budget held."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("mixed", "distinct"), default="mixed",
                        help="mixed: the original 50 clients on /metrics and 3 reports; "
                        "distinct: 20 clients each on a report window of its own")
    parser.add_argument("--seconds", type=float, default=30.0, help="load duration")
    parser.add_argument("--clients", type=int, default=None,
                        help="concurrent clients (default 50 mixed, 20 distinct)")
    parser.add_argument("--budget", type=int, default=250,
                        help="serve's rate budget, requests per minute (the default; instance "
                        "crawls every 3s want about twice that, so it binds)")
    parser.add_argument("--bucket-interval", default="2s",
                        help="serve's bucket poll interval (its reserve comes off the budget)")
    parser.add_argument("--instances", type=int, default=2000, help="simulated fleet size")
    parser.add_argument("--history-days", type=int, default=0,
                        help="days of hourly history written before serve starts (0: none)")
    parser.add_argument("--serve-log", type=Path, help="copy serve's log (stderr) here")
    parser.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return probe_main(args.probe, args.seconds)
    clients = args.clients if args.clients is not None else (50 if args.mode == "mixed" else 20)
    interval = float(args.bucket_interval.rstrip("s"))

    config = SimulatorConfig(instances=args.instances, buckets=60, seed=21,
                             churn_interval=0.2, latency=0.005)
    with tempfile.TemporaryDirectory(prefix="nexus-load-") as tmp, SimulatorThread(config) as sim:
        db = Path(tmp) / "load.duckdb"
        if args.history_days:
            t0 = time.monotonic()
            crawls = seed_history(db, args.history_days, args.instances, 500)
            print(f"history: {crawls} hourly crawls of {args.instances} instances over "
                  f"{args.history_days} days, {db.stat().st_size / 1e6:.1f} MB, written in "
                  f"{time.monotonic() - t0:.0f}s")
        serve = Serve(sim, db, args.budget, args.bucket_interval, args.serve_log)
        try:
            serve.wait_listening()
            base = f"http://127.0.0.1:{serve.port}"
            wait_first_crawls(serve)
            before = crawls_finished(serve)
            print(f"serve ready on {base}; mode {args.mode}, {clients} clients for "
                  f"{args.seconds:g}s; fleet {args.instances} instances with churn; budget "
                  f"{args.budget}/min; bucket interval {interval:g}s; cpus {os.cpu_count()}")
            started = time.monotonic()
            if args.mode == "mixed":
                stats = asyncio.run(hammer(base, clients, args.seconds))
            else:
                stats = run_distinct(base, distinct_windows(clients, args.history_days),
                                     args.seconds)
            elapsed = time.monotonic() - started
            after = crawls_finished(serve)
            spacing = poll_spacing(serve, started)
            durations = poll_durations(serve, started)
            events = list(serve.events)
            failed_polls = [f"{e.get('error_code')}: {e.get('error')}" for e in serve.events
                            if e.get("event") == "crawl.finished" and e.get("status") != "succeeded"
                            and float(str(e["_read_at"])) >= started]
        finally:
            code = serve.stop()
        api_times = [r.time for r in sim.request_log.records()]

    failed = False
    print(f"{'endpoint':<10} {'requests':>9} {'req/s':>8} {'refused':>8} {'errors':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, s in stats.items():
        lat = s.latencies
        print(f"{name:<10} {len(lat):>9} {len(lat) / elapsed:>8.1f} {s.refused:>8} "
              f"{len(s.errors):>7} {quantile(lat, 0.5):>8.1f} {quantile(lat, 0.99):>8.1f} "
              f"{max(lat, default=0) * 1000:>8.1f}")
        for error in s.errors[:5]:
            print(f"  error: {error}")
        failed |= bool(s.errors)
    committed = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    print(f"crawls finished during the load: {committed} (serve exit code {code})")
    for error in failed_polls[:3]:
        print(f"  failed bucket poll: {error}")
    # What the service was doing around each slow scrape (the monotonic clock is shared).
    crawls = [(float(str(e["_read_at"])), ",".join(map(str, e.get("kinds") or [])),
               float(str(e.get("seconds") or 0)))  # type: ignore[arg-type]
              for e in events if e.get("event") == "crawl.finished"]
    for at, seconds in stats["/metrics"].slow[:10]:
        near = [f"{kinds} finished {finished - at:+.1f}s (took {took:.1f}s)"
                for finished, kinds, took in crawls if -2 < finished - at < 5]
        print(f"  slow scrape at +{at - started:.1f}s: {seconds * 1000:.0f} ms; "
              f"{'; '.join(near) or 'no crawl near'}")
    if spacing:
        print(f"bucket-poll spacing: {len(spacing)} gaps, p50 {statistics.median(spacing):.2f}s, "
              f"max {max(spacing):.2f}s at a {interval:g}s interval "
              f"(max {max(spacing) / interval:.2f} x the interval); polls took p50 "
              f"{statistics.median(durations):.2f}s, max {max(durations):.2f}s")
    else:
        print(f"bucket-poll spacing: fewer than two bucket polls finished during the load "
              f"(interval {interval:g}s)")
    p99 = quantile(stats["/metrics"].latencies, 0.99)
    worst = max(spacing) if spacing else float("inf")
    print(f"goals: /metrics p99 {p99:.1f} ms of < {GOAL_METRICS_P99_MS:g} ms "
          f"(ratio {p99 / GOAL_METRICS_P99_MS:.2f}); bucket-poll spacing max "
          f"{worst:.2f}s of <= {GOAL_SPACING_RATIO * interval:.2f}s "
          f"(ratio {worst / (GOAL_SPACING_RATIO * interval):.2f}): "
          + ("met" if p99 < GOAL_METRICS_P99_MS and worst <= GOAL_SPACING_RATIO * interval
             else "MISSED"))
    peak = max_in_window(api_times, BUDGET_WINDOW)
    print(f"API requests: {len(api_times)} in total; most in any {BUDGET_WINDOW:g}s window: "
          f"{peak} of a budget of {args.budget} ({peak / args.budget:.0%})")
    if peak > args.budget:
        print("FAIL: a crawl went past the rate budget")
        failed = True
    if not committed.get("instances:succeeded") or not committed.get("buckets:succeeded"):
        print("FAIL: no instance or no bucket crawl committed during the load")
        failed = True
    if code != 0:
        print("FAIL: serve did not stop cleanly")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
