"""Names resolved when first asked for: the simulator package (PEP 562) and ``report``'s
optional flags. Each check runs in a fresh interpreter, where nothing is imported yet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter at the repository root; its standard output."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_public_name_of_the_simulator_resolves() -> None:
    """``from nexus_audit.simulator import NAME`` works for each name of ``__all__``, each
    in an interpreter of its own (no earlier import resolving it first); ``__all__`` and
    the table of homes name the same names; ``dir()`` lists them before any is used."""
    import nexus_audit.simulator as simulator

    names = list(simulator.__all__)
    assert sorted(names) == sorted(simulator._HOMES)
    listed = json.loads(_python(
        "import json, nexus_audit.simulator as s; print(json.dumps(dir(s)))"))
    assert set(names) <= set(listed)
    for name in names:
        code = f"from nexus_audit.simulator import {name}; assert {name} is not None"
        _python(code)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        simulator.nope  # noqa: B018 - the lookup is the test


def test_simulator_module_entry_point_answers_help() -> None:
    """``python -m nexus_audit.simulator --help`` prints its usage and exits 0."""
    assert _python("import runpy, sys; sys.argv = ['x', '--help']\n"
                   "try:\n    runpy.run_module('nexus_audit.simulator', run_name='__main__')\n"
                   "except SystemExit as exc:\n    assert exc.code == 0, exc.code"
                   ).startswith("usage:")


_REPORT = """
import json, os, sys, structlog
from datetime import UTC, datetime, timedelta
from nexus_audit.history.store import Store
from tests.test_store import crawl, inst
db = sys.argv[1]
store = Store(db); store.migrate()
crawl(store, datetime.now(UTC) - timedelta(minutes=5), instances=[inst("i-1")])
store.close()
os.environ["NEXUS_AUDIT_DB"] = db
for name in [n for n in os.environ if n.startswith("NEXUS_") and n != "NEXUS_AUDIT_DB"]:
    del os.environ[name]
from nexus_audit.cli import main
code = main(["report", "--since", "1h", *sys.argv[2:]])
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in ("aiohttp", "cryptography")
               or m.startswith(("nexus_audit.simulator.app", "nexus_audit.simulator.runner",
                                "nexus_audit.simulator.fleet", "nexus_audit.output.archive",
                                "nexus_audit.output.bundle", "nexus_audit.history.parquet")))
print(json.dumps([code, heavy]))
"""


def test_a_plain_report_imports_none_of_the_optional_paths(tmp_path: Path) -> None:
    """A plain ``report`` imports neither aiohttp, the signing library, the simulator's
    server (its parser names ``simulate``'s flags: the config module only) nor the
    upload, bundle and Parquet modules; a bad ``--retention`` is refused
    all the same (exit 2), without importing the upload path."""
    done = subprocess.run([sys.executable, "-c", _REPORT, str(tmp_path / "h.duckdb"),
                           "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    code, heavy = json.loads(done.stdout.splitlines()[-1])
    assert (code, heavy) == (0, [])
    done = subprocess.run([sys.executable, "-c", _REPORT, str(tmp_path / "h2.duckdb"),
                           "--retention", "forever"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    code, heavy = json.loads(done.stdout.splitlines()[-1])
    assert (code, heavy) == (2, [])
    assert done.stderr.startswith("nexus-audit: error: --retention")
