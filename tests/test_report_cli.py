"""``nexus-audit report`` end to end in-process: formats, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexus_audit.cli import main
from nexus_audit.history.store import Store
from tests.test_report import rich_history

UNTIL = "2026-03-01T12:00:00Z"
SINCE = "2026-03-01T00:00:00Z"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """NEXUS_AUDIT_DB pointing into tmp_path, no key, no config file."""
    for name in ("NEXUS_API_KEY", "NEXUS_API_KEY_FILE", "NEXUS_AUDIT_CONFIG",
                 "NEXUS_AUDIT_PRICING"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "history.duckdb"
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(path))
    return path


@pytest.fixture
def rich_db(db: Path) -> Path:
    """The rich history in the configured database."""
    store = Store(db)
    store.migrate()
    rich_history(store)
    return db


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI; return (exit code, stdout, stderr)."""
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_report(rich_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--format json prints the report JSON for the window, with the shipped prices."""
    code, out, err = run(capsys, "--since", "2026-03-01T01:00:00Z", "--until", UNTIL,
                         "--format", "json", "--stale-after", "6h")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["window"] == {"since": "2026-03-01T01:00:00Z", "until": UNTIL}
    assert data["pricing"]["name"] == "example-list-prices"
    assert {s["id"] for s in data["stale_instances"]} == {"i-old", "i-batch"}


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv"])
def test_other_formats(rich_db: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """Every format renders the same window without error."""
    code, out, err = run(capsys, "--since", SINCE, "--until", UNTIL, "--format", fmt,
                         "--account", "acme")
    assert (code, err) == (0, "")
    assert "b-site" in out


def test_unknown_account_exit_2(rich_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown account is a usage error: exit 2, one line naming the known accounts."""
    code, out, err = run(capsys, "--since", SINCE, "--until", UNTIL, "--account", "nope")
    assert code == 2
    assert out == ""
    assert err.splitlines()[0] == ("nexus-audit: error: --account: no history for account "
                                   "'nope' (known: acme, beta)")


def test_bad_since_exit_2(rich_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --since is a usage error: exit 2, no traceback."""
    code, _, err = run(capsys, "--since", "yesterday")
    assert code == 2
    assert "since" in err
    assert "Traceback" not in err


def test_window_without_crawls_exit_1(rich_db: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A window without crawls: exit 1 with the span the history covers."""
    code, _, err = run(capsys, "--since", "2026-02-01T00:00:00Z",
                       "--until", "2026-02-02T00:00:00Z")
    assert code == 1
    assert "no crawls between 2026-02-01T00:00:00Z and 2026-02-02T00:00:00Z" in err


def test_empty_database_exit_1(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A migrated database without crawls: exit 1, 'history is empty'."""
    Store(db).migrate()
    code, _, err = run(capsys)
    assert code == 1
    assert "history is empty" in err


def test_missing_database_is_not_created(db: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """No database file: exit 1 with a clear message, and the file is not created."""
    code, _, err = run(capsys)
    assert code == 1
    assert "no history database" in err
    assert not db.exists()


def test_not_a_database_exit_1(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not DuckDB: exit 1, file untouched."""
    db.write_text("hello\n" * 100)
    code, _, err = run(capsys)
    assert code == 1
    assert "not a DuckDB database" in err
    assert db.read_text() == "hello\n" * 100
