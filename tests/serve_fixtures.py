"""Pytest plugin: a real ``nexus-audit serve`` process against the simulator.

- ``serve_sim``: a SimulatorThread (small fleet) the serve processes crawl.
- ``start_serve(sim, *, args=(), env=None)``: start ``python -m nexus_audit serve`` on
  ``127.0.0.1:0`` with NEXUS_API_URL / NEXUS_API_KEY pointing at ``sim`` and the database
  in ``tmp_path``; the real port is read back from its ``serve.listening`` log event.
  Every process is stopped by its pid after the test.
- ``promtool_path``: Debian's promtool; skipped when absent, except under CI (``tests.ci``),
  where its absence is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nexus_audit.simulator import SimulatorConfig, SimulatorThread
from tests.ci import skip_or_fail

T = TypeVar("T")
START_TIMEOUT = 20.0
READY_TIMEOUT = 30.0


def wait_until(probe: Callable[[], T | None], *, timeout: float, what: str,
               interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something other than None, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class ServeProcess:
    """One running ``serve``: its pid, address, log events, and HTTP helpers."""

    def __init__(self, proc: subprocess.Popen[bytes], *, scheme: str,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.proc = proc
        self.scheme = scheme
        self.ssl_context = ssl_context
        self.port = 0
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="serve-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every JSON log event so far (non-JSON lines are kept in ``lines`` only)."""
        with self._lock:
            lines = list(self.lines)
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def events_named(self, name: str) -> list[dict[str, Any]]:
        """The log events called ``name``."""
        return [e for e in self.events if e.get("event") == name]

    def log_text(self) -> str:
        """Everything written to standard error so far."""
        with self._lock:
            return "\n".join(self.lines)

    def wait_listening(self) -> None:
        """Read the bound port from the ``serve.listening`` event."""
        def probe() -> int | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n"
                                     f"{self.log_text()}")
            found = self.events_named("serve.listening")
            return int(found[0]["port"]) if found else None

        self.port = wait_until(probe, timeout=START_TIMEOUT, what="serve to listen")

    def url(self, path: str) -> str:
        """The full URL of ``path`` on this server."""
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def get(self, path: str, headers: Mapping[str, str] | None = None,
            timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        """GET ``path``: status, headers and body (error statuses included)."""
        # Our own loopback URL, http(s) only.
        request = urllib.request.Request(self.url(path),  # noqa: S310
                                         headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=timeout,  # noqa: S310
                                        context=self.ssl_context) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def get_json(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """GET ``path`` and decode its JSON body."""
        status, _, body = self.get(path, headers)
        return status, json.loads(body)

    def wait_ready(self, headers: Mapping[str, str] | None = None,
                   timeout: float = READY_TIMEOUT) -> None:
        """Poll /readyz until it answers 200 (every kind of every account crawled)."""
        def probe() -> bool | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n"
                                     f"{self.log_text()}")
            return True if self.get("/readyz", headers)[0] == 200 else None

        wait_until(probe, timeout=timeout, what="/readyz to answer 200")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` to the process (by pid) and wait for its exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            self._close()
        return code

    def kill(self) -> None:
        """Kill the process by its pid if it still runs, and release its pipe."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self.proc.poll() is not None:
            self._reader.join(5)
            if self.proc.stderr is not None and not self._reader.is_alive():
                self.proc.stderr.close()


StartServe = Callable[..., ServeProcess]


@pytest.fixture
def serve_sim() -> Iterator[SimulatorThread]:
    """A simulator in a thread with a small fleet (120 instances, 12 buckets)."""
    with SimulatorThread(SimulatorConfig(instances=120, buckets=12, seed=7)) as sim:
        yield sim


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[StartServe]:
    """Factory starting ``serve`` processes against a simulator; all killed afterwards."""
    started: list[ServeProcess] = []

    def factory(sim: SimulatorThread, *, args: Sequence[str] = ("--interval", "2s",
                                                                "--bucket-interval", "1s"),
                env: Mapping[str, str] | None = None, tls_cafile: Path | None = None,
                wait: bool = True) -> ServeProcess:
        environment = {
            key: value for key, value in os.environ.items()
            if not key.startswith(("NEXUS_", "PYTHON"))
        }
        environment.update({
            "NEXUS_API_URL": sim.url,
            "NEXUS_API_KEY": sim.key,
            "NEXUS_AUDIT_DB": str(tmp_path / "serve.duckdb"),
            "PYTHONUNBUFFERED": "1",
        })
        environment.update(env or {})
        command = [sys.executable, "-m", "nexus_audit", "serve", "--listen", "127.0.0.1:0",
                   *args]
        # A session of its own: a test can signal its process group as a terminal's
        # Ctrl-C does, without signalling pytest.
        proc = subprocess.Popen(command, env=environment, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        context = ssl.create_default_context(cafile=str(tls_cafile)) if tls_cafile else None
        serve = ServeProcess(proc, scheme="https" if tls_cafile else "http",
                             ssl_context=context)
        started.append(serve)
        if wait:
            serve.wait_listening()
        return serve

    yield factory
    for serve in started:
        serve.kill()


@pytest.fixture
def promtool_path() -> str:
    """promtool's path; skip without it, except under CI where it must be installed."""
    path = shutil.which("promtool")
    if path is None:
        skip_or_fail("promtool is not installed (apt-get install --no-install-recommends "
                     "prometheus)")
    return path
