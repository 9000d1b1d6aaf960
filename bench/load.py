"""Load benchmark: /metrics and /report under 50 concurrent clients while crawls commit.

Starts the simulator (in this process, on loopback, with churn) and a real ``nexus-audit
serve`` child process that crawls it on short intervals with a rate budget small enough to
bind; waits until serve is ready; then 50 clients hammer ``GET /metrics`` and
``GET /report`` (three query variants) for ``--seconds``. Prints, per endpoint, requests,
errors and latency p50/p99/max, the crawls committed during the run, and from the
simulator's own request log the most API requests in any 60-second window against the
budget (no crawl may be pushed past it). Exits 1 on any error or budget overrun.

Usage: ``.venv/bin/python bench/load.py [--seconds 30] [--clients 50] [--budget 250]
[--bucket-interval 2s] [--instances 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from nexus_audit.simulator import SimulatorConfig, SimulatorThread

REPO = Path(__file__).resolve().parents[1]
REPORT_QUERIES = ("/report?since=1h", "/report?since=30m&account=default",
                  "/report?since=2h&stale_after=1h")
BUDGET_WINDOW = 60.0


@dataclass
class Stats:
    """Latencies (seconds) and errors of one endpoint."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Serve:
    """A ``nexus-audit serve`` child process; its port is read from its log."""

    def __init__(self, sim: SimulatorThread, db: Path, budget: int, bucket_interval: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        env.update({"NEXUS_API_URL": sim.url, "NEXUS_API_KEY": sim.key,
                    "NEXUS_AUDIT_DB": str(db), "NEXUS_RATE_BUDGET": str(budget),
                    "PYTHONUNBUFFERED": "1"})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nexus_audit", "serve", "--listen", "127.0.0.1:0",
             "--interval", "3s", "--bucket-interval", bucket_interval],
            cwd=db.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.events: list[dict[str, object]] = []
        self.port = 0
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
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
    parser.add_argument("--seconds", type=float, default=30.0, help="load duration")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--budget", type=int, default=250,
                        help="serve's rate budget, requests per minute (the default; instance "
                        "crawls every 3s want about twice that, so it binds)")
    parser.add_argument("--bucket-interval", default="2s",
                        help="serve's bucket poll interval (its reserve comes off the budget)")
    parser.add_argument("--instances", type=int, default=2000, help="simulated fleet size")
    args = parser.parse_args()

    config = SimulatorConfig(instances=args.instances, buckets=60, seed=21,
                             churn_interval=0.2, latency=0.005)
    with tempfile.TemporaryDirectory(prefix="nexus-load-") as tmp, SimulatorThread(config) as sim:
        serve = Serve(sim, Path(tmp) / "load.duckdb", args.budget, args.bucket_interval)
        try:
            serve.wait_listening()
            base = f"http://127.0.0.1:{serve.port}"
            wait_first_crawls(serve)
            before = crawls_finished(serve)
            print(f"serve ready on {base}; {args.clients} clients for {args.seconds:g}s; "
                  f"fleet {args.instances} instances with churn; budget {args.budget}/min; "
                  f"cpus {os.cpu_count()}")
            started = time.monotonic()
            stats = asyncio.run(hammer(base, args.clients, args.seconds))
            elapsed = time.monotonic() - started
            after = crawls_finished(serve)
        finally:
            code = serve.stop()
        api_times = [r.time for r in sim.request_log.records()]

    failed = False
    print(f"{'endpoint':<10} {'requests':>9} {'req/s':>8} {'errors':>7} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8}")
    for name, s in stats.items():
        lat = s.latencies
        print(f"{name:<10} {len(lat):>9} {len(lat) / elapsed:>8.1f} {len(s.errors):>7} "
              f"{quantile(lat, 0.5):>8.1f} {quantile(lat, 0.99):>8.1f} "
              f"{max(lat, default=0) * 1000:>8.1f}")
        for error in s.errors[:5]:
            print(f"  error: {error}")
        failed |= bool(s.errors)
    committed = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    print(f"crawls finished during the load: {committed} (serve exit code {code})")
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
