"""Parquet export: the same report over the files as over the database; atomic writes."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from nexus_audit.audit.report import History, build_report
from nexus_audit.cli import main
from nexus_audit.domain.timeutil import Window
from nexus_audit.errors import NoDataError
from nexus_audit.history import parquet as export_module
from nexus_audit.history.parquet import ExportError, ParquetHistory, export_history
from nexus_audit.history.store import Store
from tests.ci import skip_or_fail
from tests.test_queries import PRICES, T0
from tests.test_store import bucket, crawl, inst

D = timedelta(days=1)
STEP = timedelta(hours=6)
WINDOW = Window(T0 + 7 * D, T0 + 10 * D)


def ten_days(store: Store, crawls: int = 40) -> None:
    """Crawls every 6h for 10 days; the interesting things happen before the window too.

    i-keep runs unchanged throughout; i-late stops on day 2 and is renamed on day 5 (a
    stale run two versions long, not from the first crawl); i-temp lives on day 1 only;
    i-new appears and i-chg changes tags on day 8. b-pub goes public on day 2 for good;
    b-was is public on days 1-3 only. beta has a failed crawl in the window.
    """
    for k in range(crawls):
        at = T0 + k * STEP
        day = k // 4
        crawl(store, at, instances=[
            inst("i-keep", plan="standard"),
            inst("i-late", status="running" if day < 2 else "stopped",
                 name="late" if day < 5 else "late-renamed"),
            *([inst("i-temp")] if day == 1 else []),
            *([inst("i-new", cpu=3, memory_gb=5, plan=None)] if day >= 8 else []),
            inst("i-chg", tags='{"env":"dev"}' if day < 8 else '{"env":"prod"}'),
        ], buckets=[
            bucket("b-pub", access="private" if day < 2 else "public-read", size=10**9),
            bucket("b-was", access="public" if 1 <= day <= 3 else "private"),
            bucket("b-grow", size=(k + 1) * 10**8),
        ])
        if k % 8 == 0 or k == 33:
            crawl(store, at + timedelta(minutes=10), account="beta", failed=k == 33,
                  instances=[inst("i-b1", status="stopped")])


def report_json(history: History, window: Window = WINDOW,
                accounts: list[str] | None = None) -> dict[str, Any]:
    """The report JSON of ``window`` (stale after a day, observations hold 12h)."""
    return build_report(history, window, accounts=accounts, stale_after=D,
                        pending_stale_after=timedelta(hours=1),
                        max_gap_instances=2 * STEP, max_gap_buckets=2 * STEP,
                        pricing=PRICES, now=window.until).to_json_dict()


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (the lock file aside) by relative path."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file() and p.name != ".export.lock"}


def partitions(directory: Path, table: str) -> set[str]:
    """``account=…/date=…`` of every partition of one table."""
    return {str(p.parent.relative_to(directory / table))
            for p in (directory / table).glob("*/*/*.parquet")}


@pytest.fixture(scope="module")
def ten_day_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ten-day history, built once per module (45 commits take a few seconds)."""
    path = tmp_path_factory.mktemp("history") / "history.duckdb"
    s = Store(path)
    s.migrate()
    ten_days(s)
    s.close()  # the commits came in a burst: let go of the file before copying it
    return path


@pytest.fixture
def store(ten_day_db: Path, tmp_path: Path) -> Store:
    """A private copy of the ten-day history."""
    path = tmp_path / "history.duckdb"
    shutil.copyfile(ten_day_db, path)
    return Store(path)


def test_report_over_parquet_equals_report_over_database(store: Store, tmp_path: Path) -> None:
    """Exporting a window and running the audit queries on the files gives the same report."""
    out = tmp_path / "lake"
    result = export_history(store, out, WINDOW)
    expected = report_json(store)
    assert report_json(ParquetHistory(out)) == expected
    assert report_json(ParquetHistory(out), accounts=["acme"]) == report_json(store,
                                                                            accounts=["acme"])
    # The context before the window made it: a run two versions long, begun on day 2.
    late = next(s for s in expected["stale_instances"] if s["id"] == "i-late")
    assert (late["stale_since"], late["at_least"]) == ("2026-03-03T00:00:00Z", False)
    assert any(b["id"] == "b-pub" and b["public_since"] == "2026-03-03T00:00:00Z"
               for b in expected["public_buckets"])
    assert {(d["id"], d["change"]) for d in expected["drift"]} >= {("i-new", "added"),
                                                                  ("i-chg", "changed")}
    # Layout: hive partitions per account and day, one file each.
    assert partitions(out, "crawls") == {f"account=acme/date=2026-03-{d:02}"
                                         for d in range(1, 11)} | {
        f"account=beta/date=2026-03-{d:02}" for d in (1, 3, 5, 7, 9)}
    # Only i-temp was first seen on day 1 and it died before the window: not exported.
    assert "account=acme/date=2026-03-02" not in partitions(out, "instance_versions")
    assert result.rows["crawls"] == 46
    assert result.accounts == ("acme", "beta")
    assert not list(out.glob(".export-tmp-*"))


def test_successive_windows_add_up(store: Store, tmp_path: Path) -> None:
    """Exports of consecutive windows into one directory answer for their union."""
    out = tmp_path / "lake"
    export_history(store, out, Window(T0, T0 + 4 * D))
    export_history(store, out, Window(T0 + 4 * D, T0 + 10 * D))
    union = Window(T0 + 12 * timedelta(hours=1), T0 + 10 * D)
    assert report_json(ParquetHistory(out), union) == report_json(store, union)


def test_reexport_replaces_partitions(store: Store, tmp_path: Path) -> None:
    """Exporting again after more crawls replaces the partitions it touches, whole."""
    out = tmp_path / "lake"
    export_history(store, out, WINDOW)
    before = tree(out)
    # Day 10: i-keep stops; that closes a version first seen on day 0 (an old partition).
    for k in range(40, 44):
        crawl(store, T0 + k * STEP, instances=[inst("i-keep", plan="standard",
                                                    status="stopped")], buckets=[])
    later = Window(T0 + 8 * D, T0 + 11 * D)
    export_history(store, out, later)
    assert report_json(ParquetHistory(out), later) == report_json(store, later)
    after = tree(out)
    old = "instance_versions/account=acme/date=2026-03-01/"
    assert [k for k in before if k.startswith(old)] != [k for k in after if k.startswith(old)]
    for table in export_module.TABLES:
        files = list((out / table).glob("*/*/*.parquet"))
        assert len(files) == len({f.parent for f in files})  # one file per partition
    assert not list(out.glob(".export-tmp-*"))


def test_failed_export_leaves_the_old_one(store: Store, tmp_path: Path) -> None:
    """A failure after writing, before moving into place, changes nothing a reader sees."""
    out = tmp_path / "lake"
    export_history(store, out, WINDOW)
    before = tree(out)
    old_report = report_json(ParquetHistory(out))
    crawl(store, T0 + 40 * STEP, instances=[inst("i-keep", status="stopped")], buckets=[])
    seen: list[dict[str, Any]] = []

    def fail() -> None:
        seen.append(report_json(ParquetHistory(out)))  # a reader mid-export
        raise OSError(28, "No space left on device")

    with pytest.raises(ExportError, match="No space left"):
        export_history(store, out, Window(T0 + 8 * D, T0 + 11 * D), before_swap=fail)
    assert seen == [old_report]
    assert tree(out) == before
    assert not list(out.glob(".export-tmp-*"))


def test_without_atomic_exchange(store: Store, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Where renameat2 is missing, replacing by two renames still ends in the new export:
    every partition the second export rewrote holds its new file only, the old ones gone."""
    out = tmp_path / "lake"
    export_history(store, out, WINDOW)
    before = tree(out)
    # More history, so the second export differs: i-keep stops on day 10, which closes a
    # version first seen on day 0 and rewrites that old partition too.
    for k in range(40, 44):
        crawl(store, T0 + k * STEP, instances=[inst("i-keep", plan="standard",
                                                    status="stopped")], buckets=[])
    exchanged: list[tuple[Path, Path]] = []

    def no_exchange(a: Path, b: Path) -> bool:
        exchanged.append((a, b))
        return False

    monkeypatch.setattr(export_module, "_exchange", no_exchange)
    later = Window(T0 + 8 * D, T0 + 11 * D)
    result = export_history(store, out, later)
    after = tree(out)
    assert exchanged, "the fallback was never asked to replace a partition"
    assert report_json(ParquetHistory(out), later) == report_json(store, later)
    replaced = {str(dest.relative_to(out)) for _, dest in exchanged}
    assert "instance_versions/account=acme/date=2026-03-01" in replaced
    for partition in replaced:
        old = {k for k in before if k.startswith(partition + "/")}
        new = {k for k in after if k.startswith(partition + "/")}
        assert old, partition
        assert new, partition
        assert not old & new, f"{partition}: an old file survived the replacement"
        assert len(new) == 1, partition  # one file per partition, the new one
    assert sum(result.partitions.values()) >= len(replaced)
    assert not list(out.glob(".export-tmp-*"))


def test_one_export_at_a_time(store: Store, tmp_path: Path) -> None:
    """A second export into a directory being written is refused, the first untouched."""
    out = tmp_path / "lake"
    out.mkdir()
    with (out / ".export.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(ExportError, match="another export"):
            export_history(store, out, WINDOW)
    assert tree(out) == {}


def test_nothing_to_export(tmp_path: Path, store: Store) -> None:
    """An empty history, an unknown account and an empty directory are clear errors."""
    empty = Store(tmp_path / "empty.duckdb")
    empty.migrate()
    with pytest.raises(NoDataError, match="empty"):
        export_history(empty, tmp_path / "a", WINDOW)
    with pytest.raises(NoDataError, match="known: acme, beta"):
        export_history(store, tmp_path / "b", WINDOW, accounts=["nope"])
    with pytest.raises(NoDataError, match="no exported crawls"):
        report_json(ParquetHistory(tmp_path / "b"))


@pytest.fixture
def saved_logging() -> Iterator[None]:
    """Put back the structlog configuration (the same objects) that main() replaces."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("saved_logging")
def test_export_command(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    """``nexus-audit export`` writes the layout and prints a line per table."""
    for name in ("NEXUS_API_KEY", "NEXUS_API_KEY_FILE", "NEXUS_AUDIT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(store.path))
    out = tmp_path / "cli-lake"
    code = main(["export", "--since", "2026-03-08T00:00:00Z", "--until",
                 "2026-03-11T00:00:00Z", "--to", str(out), "--account", "acme"])
    printed, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert "crawls: 40 rows in 10 partitions" in printed
    assert partitions(out, "crawls") == {f"account=acme/date=2026-03-{d:02}"
                                         for d in range(1, 11)}
    assert main(["export", "--since", "nope", "--to", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nexus-audit: error: --since: 'nope' is neither a duration")
    assert err.count("\n") == 1


def test_exchange_swaps_directories(tmp_path: Path) -> None:
    """renameat2(RENAME_EXCHANGE) swaps two partitions in one step (Linux)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "new.parquet").write_bytes(b"new")
    (b / "old.parquet").write_bytes(b"old")
    if not export_module._exchange(a, b):
        skip_or_fail("this kernel or file system has no RENAME_EXCHANGE")
    assert [p.name for p in b.iterdir()] == ["new.parquet"]
    assert [p.name for p in a.iterdir()] == ["old.parquet"]


@pytest.mark.usefixtures("saved_logging")
def test_export_summary_escapes_account_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An account name from the database reaches the terminal escaped: a control
    sequence in it cannot clear the screen or forge a line."""
    for name in ("NEXUS_API_KEY", "NEXUS_API_KEY_FILE", "NEXUS_AUDIT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    store = Store(tmp_path / "hostile.duckdb")
    store.migrate()
    crawl(store, T0, account="ev\x1b[2Jil\nforged", instances=[inst("i-1")])
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(store.path))
    code = main(["export", "--since", "2026-03-01T00:00:00Z", "--until",
                 "2026-03-02T00:00:00Z", "--to", str(tmp_path / "lake")])
    printed, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert "\x1b" not in printed
    assert printed.splitlines()[0].startswith("exported ev\\x1b[2Jil\\nforged to ")
