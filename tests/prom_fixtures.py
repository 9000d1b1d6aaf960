"""Pytest plugin: promtool and a real Prometheus on loopback (registered by tests/conftest.py).

- ``promtool``: the path of Debian's promtool (skipped without it; under CI a failure).
- ``start_prometheus(targets, rule_files)``: a Prometheus scraping ``targets`` every second,
  with its storage in ``tmp_path`` and its web listener on a free loopback port; stopped by
  pid when the test ends.
- ``listening_port(pid)``: the TCP port a child process listens on, read from /proc, so
  every process here binds port 0 and no test picks a fixed port.
- ``http_get`` / ``wait_for``: small synchronous helpers with deadlines instead of sleeps.
- ``load_dashboards`` / ``dashboard_targets``: the Grafana dashboards and their queries.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.ci import skip_or_fail

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
#: Panels and query targets each dashboard ships (rows excluded): the per-panel checks
#: assert these counts first, so a dashboard that lost its panels cannot pass them empty.
#: Adding or removing a panel changes this table in the same commit.
PANEL_COUNTS: dict[str, tuple[int, int]] = {
    "cost": (10, 10),
    "exporter-health": (9, 15),
    "fleet-inventory": (13, 14),
    "security": (10, 10),
}

_LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON under grafana/dashboards, by file stem."""
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARDS}


def iter_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, panels inside collapsed rows included (rows excluded)."""
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_targets(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every target of every panel."""
    return [(panel["title"], target.get("expr", ""))
            for panel in iter_panels(board) for target in panel.get("targets", [])]


def listening_ports(pid: int) -> set[int]:
    """Ports of the TCP sockets ``pid`` listens on (Linux /proc; empty if it has none yet)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as handle:
            next(handle)
            for line in handle:
                parts = line.split()
                if parts[3] == _LISTEN_STATE and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def wait_for(probe: Callable[[], T | None], *, timeout: float, what: str,
             proc: subprocess.Popen[Any] | None = None, poll: float = 0.1,
             output: Callable[[], str] | None = None) -> T:
    """Call ``probe`` until it returns something other than None, or fail after ``timeout``.

    With ``proc``, fail at once (with its output, or ``output()``) if it exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if proc is not None and proc.poll() is not None:
            out = output() if output else proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"{what}: process exited with {proc.returncode}:\n{out}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)  # polling a condition, not waiting for time to pass


def listening_port(proc: subprocess.Popen[Any], *, timeout: float = 20.0) -> int:
    """The single port ``proc`` listens on, once it listens."""

    def probe() -> int | None:
        ports = listening_ports(proc.pid)
        return min(ports) if ports else None

    return wait_for(probe, timeout=timeout, what=f"pid {proc.pid} to listen", proc=proc)


def http_get(url: str, *, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url``: (status, body); HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def answers(url: str, status: int = 200) -> bool | None:
    """True when GET ``url`` answers ``status``; None while it cannot (not listening yet)."""
    try:
        return http_get(url)[0] == status or None
    except OSError:
        return None


def stop_process(proc: subprocess.Popen[Any], *, sig: int = signal.SIGTERM,
                 timeout: float = 10.0) -> None:
    """Stop ``proc`` by its pid: ``sig``, then SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


@dataclass
class PrometheusServer:
    """A running Prometheus and its HTTP API."""

    proc: subprocess.Popen[str]
    url: str
    log_path: Path
    config_path: Path = field(repr=False)

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; fail the test on an API error."""
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            pytest.fail(f"Prometheus /api/v1/{path} {params}: HTTP {status}: "
                        f"{payload.get('errorType')}: {payload.get('error')}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (scalars come back as a one-item list)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def log(self) -> str:
        """What Prometheus wrote to its log so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _prometheus_config(targets: Sequence[str], rule_files: Sequence[Path]) -> str:
    # JSON is YAML: no YAML library needed to write Prometheus' configuration.
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "scrape_timeout": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "nexus-audit",
                            "static_configs": [{"targets": list(targets)}]}],
    }
    return json.dumps(config, indent=2)


def _missing(tool: str) -> None:
    """Skip without ``tool`` locally; under CI (which installs it) its absence is a failure."""
    skip_or_fail(f"{tool} not installed (apt-get install --no-install-recommends prometheus)")


@pytest.fixture
def promtool() -> str:
    """Path of promtool (Debian's prometheus package); skip when it is not installed."""
    path = shutil.which("promtool")
    if path is None:
        _missing("promtool")
    assert path is not None
    return path


@pytest.fixture
def start_prometheus(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[Sequence[str], Sequence[Path]], PrometheusServer]]:
    """Factory: start a Prometheus scraping ``targets`` (host:port) with ``rule_files``."""
    binary = shutil.which("prometheus")
    if binary is None:
        _missing("prometheus")
    assert binary is not None
    started: list[PrometheusServer] = []

    def factory(targets: Sequence[str], rule_files: Sequence[Path] = ()) -> PrometheusServer:
        work = tmp_path_factory.mktemp("prometheus")
        config_path = work / "prometheus.yml"
        config_path.write_text(_prometheus_config(targets, rule_files), encoding="utf-8")
        log_path = work / "prometheus.log"
        with log_path.open("w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                [binary, f"--config.file={config_path}", f"--storage.tsdb.path={work / 'data'}",
                 "--web.listen-address=127.0.0.1:0", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            )
        server = PrometheusServer(proc, "", log_path, config_path)
        started.append(server)
        port = wait_for(lambda: min(listening_ports(proc.pid), default=None), timeout=20,
                        what="Prometheus to listen", proc=proc, output=server.log)
        server.url = f"http://127.0.0.1:{port}"

        def ready() -> bool | None:
            with contextlib.suppress(OSError):
                return http_get(f"{server.url}/-/ready")[0] == 200 or None
            return None

        wait_for(ready, timeout=20, what="Prometheus /-/ready", proc=proc, output=server.log)
        return server

    yield factory
    for server in reversed(started):
        stop_process(server.proc)
