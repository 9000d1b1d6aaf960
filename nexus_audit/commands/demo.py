"""``nexus-audit demo``: the whole service against the built-in simulator, with churn.

Wiring only: a simulator with a seeded fleet runs in a thread of this process and churns
(instances created, stopped, deleted; buckets turning public and private again), and
``serve`` itself (:func:`nexus_audit.commands.serve.serve_command`, unchanged) crawls it
every ``--interval``. Ctrl-C or SIGTERM stops serve cleanly, then the simulator; exit 0.
"""

from __future__ import annotations

import argparse
import shlex
import socket
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Final, TextIO

from nexus_audit.commands.serve import serve_command
from nexus_audit.config import AccountConfig, Secret, Settings, WebConfig
from nexus_audit.domain.timeutil import format_duration, parse_duration
from nexus_audit.domain.values import validate_listen
from nexus_audit.logs import configure_logging
from nexus_audit.simulator import SimulatorConfig, SimulatorThread

DEMO_DB: Final = "nexus-audit-demo.duckdb"
DEMO_ACCOUNT: Final = "demo"
DEMO_SEED: Final = 6
#: Churn steps per crawl interval: each crawl sees a few changes, never none for long.
CHURN_PER_INTERVAL: Final = 3


def demo_db_path(flag: str | None, settings: Settings) -> Path:
    """The demo's database: ``--db``, else ``NEXUS_AUDIT_DB``, else ./nexus-audit-demo.duckdb
    (never the configuration file's ``db``: simulated crawls stay out of a real history)."""
    from_env = settings.db_path if "db_path" in settings.from_env else None
    return Path(flag or from_env or DEMO_DB).expanduser().absolute()


def resolve_listen(listen: str) -> str:
    """``HOST:PORT`` with port 0 replaced by a port free now, so the printed URLs are real."""
    host, port = validate_listen(listen, "--listen")
    if port != 0:
        return listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port = int(probe.getsockname()[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def churn_seconds(interval: timedelta) -> float:
    """Seconds between the simulator's churn steps for a crawl ``interval`` (at least 1s)."""
    return max(1.0, interval.total_seconds() / CHURN_PER_INTERVAL)


def demo_settings(settings: Settings, *, api_url: str, api_key: str, db: Path, listen: str,
                  interval: timedelta) -> Settings:
    """``settings`` turned to the simulator: one account, the demo database, both kinds
    crawled every ``interval``, and the endpoints open on ``listen`` (no auth, no TLS)."""
    account = AccountConfig(name=DEMO_ACCOUNT, api_url=api_url, api_key=Secret(api_key))
    return replace(settings, accounts=(account,), db_path=db, interval=interval,
                   bucket_interval=interval, web=WebConfig(listen=listen))


def banner(*, listen: str, db: Path, interval: timedelta, sim: SimulatorConfig,
           api_url: str) -> str:
    """What the demo prints: what runs, what to open, what to run next."""
    base = f"http://{listen}"
    every = format_duration(interval)
    db_env = shlex.quote(str(db))
    return "\n".join([
        "nexus-audit demo: the service against a simulated CloudNexus fleet",
        f"  simulator   {api_url} ({sim.instances} instances, {sim.buckets} buckets, "
        f"churn every {sim.churn_interval:.3g}s)",
        f"  crawls      instances and buckets every {every}",
        f"  database    {db}",
        "",
        "Open (ready after the first crawls):",
        f"  {base}/metrics            Prometheus metrics",
        f"  {base}/report?since=1h    the audit report as JSON",
        f"  {base}/report.html?since=1h  the same report as a page with charts",
        f"  {base}/readyz             200 once every kind was crawled",
        "",
        "Run next, in another terminal:",
        f"  NEXUS_AUDIT_DB={db_env} nexus-audit report --since 1h",
        f"  NEXUS_AUDIT_DB={db_env} nexus-audit report --since 1h --stale-after 2m "
        "--format markdown",
        "",
        "Ctrl-C stops everything.",
        "",
    ])


def demo_command(args: argparse.Namespace, settings: Settings, *,
                 out: TextIO | None = None) -> int:
    """Run ``nexus-audit demo``; the exit code (0 after Ctrl-C or SIGTERM)."""
    out = out or sys.stdout
    interval = parse_duration(args.interval, parameter="--interval")
    listen = resolve_listen(args.listen)
    db = demo_db_path(args.db, settings)
    sim_config = SimulatorConfig(seed=DEMO_SEED, churn_interval=churn_seconds(interval))
    with SimulatorThread(sim_config) as sim:
        service_settings = demo_settings(settings, api_url=sim.url, api_key=sim.key, db=db,
                                         listen=listen, interval=interval)
        # The simulator's key is a throwaway, but it is a key: keep it out of the logs too.
        configure_logging(secrets=service_settings.secrets())
        out.write(banner(listen=listen, db=db, interval=interval, sim=sim_config,
                         api_url=sim.url))
        out.flush()
        flags = argparse.Namespace(listen=None, interval=None, bucket_interval=None)
        return serve_command(flags, service_settings)
