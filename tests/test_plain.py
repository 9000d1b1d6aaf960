"""DuckDB's optimizer off for a diff commit's appends, on the commit's cursor only
(nexus_audit.history.plain): the statements it helps (compaction, the set-based
comparison, reads, even through the writer's hold) always run with it on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from nexus_audit.domain.model import Kind
from nexus_audit.history import store as store_module
from nexus_audit.history.duckfile import Commit
from nexus_audit.history.store import StagedCrawl, Store
from tests.files_fixtures import OwnFiles
from tests.test_store import HOUR, T0, bucket, crawl, inst


def optimizer_on(cursor: duckdb.DuckDBPyConnection) -> bool:
    """Whether DuckDB's optimizer is on for statements on ``cursor``."""
    row = cursor.execute("SELECT current_setting('enable_optimizer')").fetchone()
    assert row is not None
    return bool(row[0])


@pytest.fixture
def store(tmp_path: Path, files: OwnFiles) -> Store:
    """A migrated store on the test's DuckFiles, whose clock stands still: every commit
    after the first is part of a burst, holding the file."""
    s = Store(tmp_path / "history.duckdb", lock_timeout=5.0, files=files.files)
    s.migrate()
    return s


@pytest.fixture
def advancing(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, bool, bool]]:
    """Per kind a commit wrote: its account, the kind, whether it was compared set-based
    (no snapshot to diff against), and whether the optimizer was on as it finished."""
    seen: list[tuple[str, str, bool, bool]] = []
    real = Store._advance

    def spy(commit: Commit, staged: StagedCrawl, kind: Kind, crawl_id: int, *,
            diff: bool) -> Any:
        plan = real(commit, staged, kind, crawl_id, diff=diff)
        seen.append((staged.account, kind, plan is None, optimizer_on(commit.cursor)))
        return plan

    monkeypatch.setattr(Store, "_advance", staticmethod(spy))
    return seen


@pytest.fixture
def compacting(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the optimizer was on while each compaction ran (at the hold's release)."""
    seen: list[bool] = []
    real = store_module.compact

    def spy(commit: Commit) -> None:
        real(commit)
        seen.append(optimizer_on(commit.cursor))

    monkeypatch.setattr(store_module, "compact", spy)
    return seen


def test_diff_commits_append_without_the_optimizer(
        store: Store, advancing: list[tuple[str, str, bool, bool]]) -> None:
    """A crawl compared with the snapshot of the one before writes its changes with the
    optimizer off; the first (set-based, no snapshot yet), a new account's first in the
    same burst, and a kind compared set-based after another kind's diff in one commit
    run with it on; the history is right."""
    for k in range(3):
        crawl(store, T0 + k * HOUR, instances=[inst("i-1", name=f"gen-{k}")],
              buckets=[bucket("b-1", size=10**9 + k)])
    crawl(store, T0 + 3 * HOUR, instances=[inst("i-9")], account="other")
    crawl(store, T0 + 4 * HOUR, instances=[inst("i-1", name="gen-4")])
    # Instances against their snapshot, then its first buckets set-based: back on.
    crawl(store, T0 + 5 * HOUR, instances=[inst("i-9", name="renamed")],
          buckets=[bucket("b-9")], account="other")
    assert store.files.holding(store.path)
    assert advancing == [
        ("acme", "instances", True, True), ("acme", "buckets", True, True),
        *[("acme", "instances", False, False), ("acme", "buckets", False, False)] * 2,
        ("other", "instances", True, True), ("acme", "instances", False, False),
        ("other", "instances", False, False), ("other", "buckets", True, True)]
    with store.read() as con:
        names = con.execute("SELECT account, name FROM instance_versions "
                            "WHERE until_crawl IS NULL ORDER BY 1").fetchall()
        buckets = con.execute("SELECT account, id FROM bucket_versions "
                              "WHERE until_crawl IS NULL ORDER BY 1").fetchall()
    assert names == [("acme", "gen-4"), ("other", "renamed")]
    assert buckets == [("acme", "b-1"), ("other", "b-9")]


def test_reads_and_compaction_during_a_hold_run_optimized(
        store: Store, compacting: list[bool]) -> None:
    """A read through the writer's hold has its own cursor, optimizer on; the compaction
    before the file is let go turns it back on for the commit's cursor."""
    for k in range(3):
        crawl(store, T0 + k * HOUR, instances=[inst("i-1", name=f"gen-{k}")])
    assert store.files.holding(store.path)
    with store.read() as con:
        assert optimizer_on(con)
    store.close()
    assert compacting == [True, True]  # the first commit (alone), then the hold
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM instance_log WHERE until_crawl IS NULL"
                           ).fetchone() == (1,)
