"""The ``simulate`` command: flags, its two stdout lines, clean stop on SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from nexus_audit.simulator.cli import add_arguments, config_from_args
from tests.procio import LineReader

ROOT = Path(__file__).resolve().parent.parent


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    """Defaults match the documented ones; the key is a fresh nx_test_sk_ key."""
    args = _parse()
    assert (args.host, args.port, args.instances, args.buckets, args.seed) == (
        "127.0.0.1",
        8750,
        200,
        20,
        1,
    )
    config = config_from_args(args)
    assert config.key.startswith("nx_test_sk_")
    assert (config.rate_limit, config.rate_window, config.churn_interval) == (1000, 60.0, 0.0)


def test_flags_map_to_config(tmp_path: Path) -> None:
    """Every flag lands in the SimulatorConfig; --key-file is read and stripped."""
    key_file = tmp_path / "key"
    key_file.write_text("nx_test_sk_fromfile\n")
    args = _parse(
        *("--port", "0", "--key-file", str(key_file), "--instances", "5", "--buckets", "2"),
        *("--seed", "9", "--latency", "0.01", "--rate-limit", "7", "--rate-window", "2.5"),
        *("--fault-500", "0.1", "--fault-429", "0.2", "--fault-reset", "0.3"),
        *("--fault-slow", "0.4", "--fault-malformed", "0.5", "--churn-interval", "3"),
        *("--bucket-page-size", "4"),
    )
    c = config_from_args(args)
    assert c.key == "nx_test_sk_fromfile"
    assert (c.port, c.instances, c.buckets, c.seed, c.latency) == (0, 5, 2, 9, 0.01)
    assert (c.rate_limit, c.rate_window, c.churn_interval, c.bucket_page_size) == (7, 2.5, 3, 4)
    assert (c.fault_500, c.fault_429, c.fault_reset, c.fault_slow, c.fault_malformed) == (
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--port", "x"],
        ["--instances", "-1"],
        ["--rate-limit", "0"],
        ["--rate-window", "0"],
        ["--fault-500", "1.5"],
        ["--fault-reset", "nan"],
        ["--latency", "-1"],
        ["--key", "a", "--key-file", "b"],
    ],
)
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad flag values are usage errors: argparse exits 2 with a message."""
    with pytest.raises(SystemExit) as exc:
        _parse(*argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_subprocess_prints_url_and_key_and_stops_on_sigterm() -> None:
    """``python -m nexus_audit.simulator`` prints URL and key, serves, exits 0 on SIGTERM."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_audit.simulator", "--port", "0", "--instances", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = LineReader(proc.stdout, name="simulate")
        # A simulator that never prints fails here after the timeout; it cannot hang the run.
        url = lines.next_line(timeout=20, what="the base URL").strip()
        key = lines.next_line(timeout=20, what="the API key").strip()
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/v2")
        assert key.startswith("nx_test_sk_")
        req = urllib.request.Request(  # noqa: S310 (local http)
            f"{url}/instances?limit=100", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (local http)
            assert json.load(resp)["pagination"]["total"] == 30
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert lines.rest(timeout=5) == []  # nothing printed after the two lines
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_port_in_use_is_a_one_line_failure(capsys: pytest.CaptureFixture[str]) -> None:
    """A port that is taken exits 1 with what failed and what to do, no traceback."""
    import socket

    from nexus_audit.simulator.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--instances", "1"]) == 1
    err = capsys.readouterr().err
    assert "cannot listen" in err
    assert "--port" in err
    assert "Traceback" not in err
