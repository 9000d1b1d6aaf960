"""Ctrl-C at odd moments of a command: "interrupted", exit 130, no traceback, nothing left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_audit.cli import EXIT_INTERRUPTED, main
from nexus_audit.history import parquet as export_module
from nexus_audit.history.store import Store
from tests.test_export import ten_days

# A child that receives SIGINT (as from a terminal's Ctrl-C) the moment it starts importing
# MODULE: the start-up of the real console script, interrupted at a chosen point.
_CHILD = """
import importlib.abc, os, signal, sys
TRIP = sys.argv[1]
class Trip(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == TRIP:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Trip())
sys.argv = ["nexus-audit", *sys.argv[2:]]
from nexus_audit.cli import run
run()
"""


@pytest.mark.parametrize(("module", "argv"), [
    ("duckdb", ["verify"]),
    ("duckdb", ["report", "--since", "1d"]),
    ("nexus_audit.history.parquet", ["export"]),
    ("nexus_audit.config", ["crawl"]),
    ("structlog", ["verify-bundle", "x.tar.gz"]),
])
def test_ctrl_c_during_the_start_up_is_one_line_and_130(module: str, argv: list[str],
                                                        tmp_path: Path) -> None:
    """Ctrl-C while a command still imports its modules ends it with "interrupted" and 130."""
    env = {**os.environ, "NEXUS_AUDIT_DB": str(tmp_path / "h.duckdb"),
           "NEXUS_API_KEY": "nx_test_sk_interrupts"}
    env.pop("NEXUS_AUDIT_CONFIG", None)
    done = subprocess.run([sys.executable, "-c", _CHILD, module, *argv], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert done.stderr == "nexus-audit: interrupted\n"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_an_export_query_is_130_and_leaves_the_directory_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while DuckDB runs an export's query is "interrupted", 130, and the export's
    temporary directory is gone; any other RuntimeError is still a bug's traceback.

    DuckDB 2.0 swallows the KeyboardInterrupt of a query it interrupts and raises
    ``RuntimeError('Query interrupted')`` instead (its interrupt, and so a test driving it
    with a real SIGINT, is not reliable: the query raises what DuckDB raises)."""
    db = tmp_path / "h.duckdb"
    store = Store(db)
    store.migrate()
    ten_days(store, crawls=8)
    raised: list[RuntimeError] = [RuntimeError("Query interrupted")]

    def interrupted(*_args: object) -> object:
        raise raised[0]

    monkeypatch.setattr(export_module, "_write_tables", interrupted)
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(db))
    monkeypatch.delenv("NEXUS_AUDIT_CONFIG", raising=False)
    target = tmp_path / "export"
    assert main(["export", "--since", "30d", "--to", str(target)]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "nexus-audit: interrupted\n"
    assert [p.name for p in target.iterdir()] == [".export.lock"]
    raised[0] = RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        main(["export", "--since", "30d", "--to", str(target)])


_HELD = """
import os, signal
from nexus_audit import cli
reached = []
try:
    with cli._sigint_held():
        os.kill(os.getpid(), signal.SIGINT)
        for step in range(1000):  # bytecode boundaries where an unheld signal lands
            reached.append(step)
except KeyboardInterrupt:
    print(len(reached))
"""


def test_a_ctrl_c_during_the_start_up_is_held_back_then_delivered() -> None:
    """SIGINT during the start-up waits (a KeyboardInterrupt inside DuckDB's module
    initialisation aborts the process) and is raised as soon as the start-up is over.

    In a process of its own: the start-up has one thread, and a signal held back in one
    thread goes to any other."""
    done = subprocess.run([sys.executable, "-c", _HELD], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (done.stdout, done.stderr) == ("1000\n", "")
