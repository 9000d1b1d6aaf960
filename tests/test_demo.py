"""``nexus-audit demo``: its pure helpers, then the real command as a subprocess."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import pytest

from nexus_audit.commands.demo import (
    DEMO_ACCOUNT,
    banner,
    churn_seconds,
    demo_db_path,
    demo_settings,
    resolve_listen,
)
from nexus_audit.config import Secret, Settings, WebConfig, load_settings
from nexus_audit.errors import UsageError
from nexus_audit.simulator import SimulatorConfig
from tests.prom_fixtures import answers, http_get, stop_process, wait_for

#: A key in the environment that the demo must neither use nor print.
REAL_KEY = "nx_live_sk_0123456789abcdef0123456789abcdef"


def test_db_path_prefers_flag_then_environment_then_default(tmp_path: Path) -> None:
    """--db wins over NEXUS_AUDIT_DB, which wins over ./nexus-audit-demo.duckdb."""
    settings = load_settings({"NEXUS_AUDIT_DB": str(tmp_path / "env.duckdb")})
    assert demo_db_path(str(tmp_path / "flag.duckdb"), settings) == tmp_path / "flag.duckdb"
    assert demo_db_path(None, settings) == tmp_path / "env.duckdb"
    assert demo_db_path(None, load_settings({})) == Path.cwd() / "nexus-audit-demo.duckdb"


def test_db_path_ignores_the_configuration_files_db(tmp_path: Path) -> None:
    """The file's ``db`` is the real history: the demo's simulated crawls never go there."""
    config = tmp_path / "nexus.toml"
    config.write_text('db = "history.duckdb"\n', encoding="utf-8")
    settings = load_settings({"NEXUS_AUDIT_CONFIG": str(config)})
    assert settings.db_path == tmp_path / "history.duckdb"
    assert demo_db_path(None, settings) == Path.cwd() / "nexus-audit-demo.duckdb"


def test_resolve_listen_turns_port_zero_into_a_free_port() -> None:
    """Port 0 becomes a concrete port on the same host; other ports stay as given."""
    host, _, port = resolve_listen("127.0.0.1:0").rpartition(":")
    assert host == "127.0.0.1"
    assert 0 < int(port) < 65536
    assert resolve_listen("127.0.0.1:9747") == "127.0.0.1:9747"
    with pytest.raises(UsageError, match="--listen"):
        resolve_listen("localhost")


def test_churn_runs_a_few_times_per_crawl_interval() -> None:
    """The simulator churns three times per crawl interval, never faster than once a second."""
    assert churn_seconds(timedelta(seconds=30)) == 10.0
    assert churn_seconds(timedelta(seconds=1)) == 1.0


def test_demo_settings_point_only_at_the_simulator(tmp_path: Path) -> None:
    """Configured accounts and endpoint guards give way to one open demo account."""
    configured = Settings(web=WebConfig(listen="0.0.0.0:1", bearer_token=Secret("t")))
    settings = demo_settings(configured, api_url="http://127.0.0.1:1/v2", api_key="k",
                             db=tmp_path / "d.duckdb", listen="127.0.0.1:2",
                             interval=timedelta(seconds=30))
    (account,) = settings.accounts
    assert (account.name, account.api_url, account.api_key) == (
        DEMO_ACCOUNT, "http://127.0.0.1:1/v2", Secret("k"))
    assert settings.interval == settings.bucket_interval == timedelta(seconds=30)
    assert settings.web == WebConfig(listen="127.0.0.1:2")
    assert settings.db_path == tmp_path / "d.duckdb"


def test_banner_lists_what_to_open_and_what_to_run() -> None:
    """The banner names /metrics, /report?since=1h and the report command on the demo DB."""
    config = SimulatorConfig(api_keys=("nx_test_sk_secret",), churn_interval=10)
    text = banner(listen="127.0.0.1:9747", db=Path("/tmp/my demo.duckdb"),
                  interval=timedelta(seconds=30), sim=config, api_url="http://127.0.0.1:5/v2")
    assert "http://127.0.0.1:9747/metrics" in text
    assert "http://127.0.0.1:9747/report?since=1h" in text
    assert "http://127.0.0.1:9747/report.html?since=1h" in text
    assert "NEXUS_AUDIT_DB='/tmp/my demo.duckdb' nexus-audit report --since 1h\n" in text
    assert "every 30s" in text
    assert "Ctrl-C" in text
    assert "nx_test_sk_secret" not in text


def test_banner_rounds_the_churn_interval() -> None:
    """A churn interval of a third of the crawl interval reads as 1.67s, not 1.66667s."""
    config = SimulatorConfig(api_keys=("k",), churn_interval=churn_seconds(timedelta(seconds=5)))
    text = banner(listen="127.0.0.1:9747", db=Path("d.duckdb"), interval=timedelta(seconds=5),
                  sim=config, api_url="http://127.0.0.1:5/v2")
    assert "churn every 1.67s)" in text


@dataclass
class DemoProcess:
    """A running ``nexus-audit demo`` and what it printed so far."""

    proc: subprocess.Popen[str]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def printed(self) -> str:
        """Standard output so far."""
        return "".join(self.stdout)


def _pump(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line)


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[DemoProcess]:
    """``nexus-audit demo`` on a free port, crawling every second; stopped by pid after."""
    env = {**os.environ, "NEXUS_API_KEY": REAL_KEY, "NEXUS_API_URL": "http://127.0.0.1:9/v2",
           "NEXUS_AUDIT_SHUTDOWN_GRACE": "2s"}
    for name in ("NEXUS_API_KEY_FILE", "NEXUS_AUDIT_CONFIG", "NEXUS_AUDIT_DB"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_audit", "demo", "--listen", "127.0.0.1:0",
         "--interval", "1s", "--db", str(tmp_path / "demo.duckdb")],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True)
    demo = DemoProcess(proc)
    readers = [threading.Thread(target=_pump, args=(stream, into), daemon=True)
               for stream, into in ((proc.stdout, demo.stdout), (proc.stderr, demo.stderr))]
    for reader in readers:
        reader.start()
    try:
        wait_for(lambda: "Ctrl-C stops everything" in demo.printed() or None, timeout=30,
                 what="the demo's banner", proc=proc)
        yield demo
    finally:
        stop_process(proc)
        for reader in readers:
            reader.join(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _base_url(printed: str) -> str:
    match = re.search(r"(http://127\.0\.0\.1:\d+)/metrics", printed)
    assert match, printed
    return match.group(1)


def _report(url: str) -> dict[str, Any] | None:
    status, body = http_get(f"{url}/report?since=1h")
    return json.loads(body) if status == 200 else None


@pytest.mark.slow
def test_demo_serves_the_simulated_fleet_and_stops_on_ctrl_c(
    start_demo: DemoProcess, tmp_path: Path
) -> None:
    """The demo gets ready, its /metrics and /report show the churning simulated fleet,
    the printed report command works meanwhile, and Ctrl-C ends it with exit 0."""
    demo = start_demo
    url = _base_url(demo.printed())
    wait_for(lambda: answers(f"{url}/readyz"), timeout=30,
             what="the demo's /readyz", proc=demo.proc)

    status, metrics = http_get(f"{url}/metrics")
    assert status == 200
    assert re.search(r'^nexus_instances\{account="demo",region="[^"]+",status="running"\} [1-9]',
                     metrics, flags=re.MULTILINE)
    assert re.search(r'^nexus_public_buckets\{account="demo"\} [1-9]', metrics,
                     flags=re.MULTILINE)

    # Churn: successive crawls see instances added, removed or changed.
    report = wait_for(lambda: ((r := _report(url)) and r["drift"] and r) or None, timeout=30,
                      what="drift in /report", proc=demo.proc)
    assert report["accounts"] == ["demo"]
    assert report["inventory"]["instances"]["total"] > 0

    # The printed "run next" command, while the demo still holds the database.
    line = next(line for line in demo.printed().splitlines()
                if line.strip().endswith("nexus-audit report --since 1h"))
    words = shlex.split(line)
    assignment, command = words[0], words[1:]
    name, _, value = assignment.partition("=")
    assert (name, value) == ("NEXUS_AUDIT_DB", str(tmp_path / "demo.duckdb"))
    assert command[0] == "nexus-audit"
    ran = subprocess.run([sys.executable, "-m", "nexus_audit", *command[1:], "--format", "json"],
                         env={**os.environ, name: value, "NEXUS_API_KEY": ""},
                         capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["accounts"] == ["demo"]

    os.kill(demo.proc.pid, signal.SIGINT)
    assert demo.proc.wait(30) == 0
    errors = "".join(demo.stderr)
    assert "serve.stopped" in errors
    assert "Traceback" not in errors
    assert REAL_KEY not in errors + demo.printed()
    assert "127.0.0.1:9/v2" not in errors  # the configured API was never called


@pytest.mark.slow
def test_demo_stops_cleanly_on_sigterm(start_demo: DemoProcess) -> None:
    """SIGTERM (what `docker stop` and service managers send) also ends the demo with 0."""
    demo = start_demo
    url = _base_url(demo.printed())
    wait_for(lambda: answers(f"{url}/readyz"), timeout=30,
             what="the demo's /readyz", proc=demo.proc)
    os.kill(demo.proc.pid, signal.SIGTERM)
    assert demo.proc.wait(30) == 0
    assert "Traceback" not in "".join(demo.stderr)
