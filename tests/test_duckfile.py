"""The writer's hold on the database during a burst of commits (nexus_audit.duckfile).

A commit that follows the previous one within LINGER keeps the file attached; tests set
LINGER to an hour so that "in a burst" never depends on how fast this machine is, and
let go explicitly or through the idle check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from nexus_audit import duckfile
from nexus_audit.errors import StoreError
from nexus_audit.store import Store
from tests.test_store import T0, bucket, crawl, inst

REPO = Path(__file__).resolve().parents[1]
HOUR = timedelta(hours=1)


@pytest.fixture
def bursty(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every commit counts as part of a burst; the holds are let go after the test."""
    monkeypatch.setattr(duckfile, "LINGER", 3600.0)
    yield
    duckfile.release_all()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A migrated, empty store."""
    s = Store(tmp_path / "history.duckdb", lock_timeout=5.0)
    s.migrate()
    return s


def burst(store: Store, crawls: int, *, start: int = 0) -> list[int]:
    """Commit ``crawls`` hourly crawls in a row; the crawl ids."""
    return [crawl(store, T0 + (start + k) * HOUR, instances=[inst("i-1", name=f"gen-{k}")],
                  buckets=[bucket("b-1", size=10**9 + k)])
            for k in range(crawls)]


def crawl_ids(store: Store) -> list[int]:
    """Every committed crawl id, in order."""
    with store.read() as con:
        return [r[0] for r in con.execute("SELECT crawl_id FROM crawls ORDER BY 1").fetchall()]


def test_an_isolated_commit_lets_go_at_once(store: Store) -> None:
    """A commit with no recent predecessor detaches (and checkpoints) right away."""
    crawl(store, T0, instances=[inst("i-1")])
    assert not duckfile.holding(store.path)
    assert not Path(f"{store.path}.wal").exists()


@pytest.mark.usefixtures("bursty")
def test_a_burst_holds_the_file_and_reads_see_every_commit(store: Store,
                                                           tmp_path: Path) -> None:
    """From the second commit of a burst on, the file stays attached; reads in this process
    go through it and see every commit; close() checkpoints, so a copy is whole."""
    assert burst(store, 5) == [1, 2, 3, 4, 5]
    assert duckfile.holding(store.path)
    assert crawl_ids(store) == [1, 2, 3, 4, 5]
    assert [s.instances[0].name for s in store.latest()] == ["gen-4"]
    store.close()
    assert not duckfile.holding(store.path)
    copy = tmp_path / "copy.duckdb"
    shutil.copyfile(store.path, copy)
    assert crawl_ids(Store(copy)) == [1, 2, 3, 4, 5]


@pytest.mark.usefixtures("bursty")
def test_an_idle_hold_is_let_go(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle check lets go once no commit came for LINGER, not before."""
    burst(store, 2)
    duckfile._on_idle(store.path)  # an hour has not passed: still held
    assert duckfile.holding(store.path)
    monkeypatch.setattr(duckfile, "LINGER", 0.0)
    duckfile._on_idle(store.path)
    assert not duckfile.holding(store.path)
    assert not Path(f"{store.path}.wal").exists()


@pytest.mark.usefixtures("bursty")
def test_a_long_hold_is_let_go(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file is held for MAX_HOLD at most, however long the burst."""
    monkeypatch.setattr(duckfile, "MAX_HOLD", 0.0)
    burst(store, 3)
    assert not duckfile.holding(store.path)
    assert crawl_ids(store) == [1, 2, 3]


@pytest.mark.usefixtures("bursty")
def test_a_waiting_process_makes_the_holder_let_go(store: Store) -> None:
    """A fresh marker (another process retrying to attach) ends the hold at the next
    commit, and no new hold starts while it is fresh."""
    burst(store, 2)
    assert duckfile.holding(store.path)
    marker = Path(f"{store.path}.wait")
    marker.touch()
    try:
        burst(store, 1, start=2)
        assert not duckfile.holding(store.path)
        assert duckfile.someone_waits(store.path)
    finally:
        marker.unlink()
    # A stale marker (a waiter that died) is ignored.
    marker.touch()
    os.utime(marker, (0, 0))
    try:
        assert not duckfile.someone_waits(store.path)
        burst(store, 2, start=3)
        assert duckfile.holding(store.path)
    finally:
        marker.unlink()
    assert crawl_ids(store) == [1, 2, 3, 4, 5]


@pytest.mark.usefixtures("bursty")
def test_a_failed_commit_lets_go_and_the_next_one_works(store: Store) -> None:
    """A commit refused inside the hold (out of order) lets go of the file; nothing of it is
    written and the next commit continues the history."""
    burst(store, 2)
    with pytest.raises(StoreError, match="must be committed in order"):
        crawl(store, T0 - HOUR, instances=[inst("i-1")])
    assert not duckfile.holding(store.path)
    assert burst(store, 2, start=2) == [3, 4]
    assert crawl_ids(store) == [1, 2, 3, 4]


@pytest.mark.usefixtures("bursty")
def test_stores_sharing_a_held_file_share_what_it_knows(store: Store) -> None:
    """Two Store objects on one path in one process: ids stay consecutive across them, and
    the order check sees the other's commits while the file is held."""
    other = Store(store.path)
    assert burst(store, 2) == [1, 2]
    assert crawl(other, T0 + 2 * HOUR, instances=[inst("i-1")]) == 3
    assert crawl(store, T0 + 3 * HOUR, instances=[inst("i-1")]) == 4
    with pytest.raises(StoreError, match="must be committed in order"):
        crawl(other, T0 + 2 * HOUR, instances=[inst("i-1")])
    # Another account's first crawl during the hold asks the database, then knows.
    assert crawl(other, T0, instances=[inst("i-9")], account="globex") == 5
    assert crawl_ids(store) == [1, 2, 3, 4, 5]


@pytest.mark.usefixtures("bursty")
def test_migrate_lets_go_first(store: Store) -> None:
    """Maintenance never runs on the writer's held attachment."""
    burst(store, 2)
    store.migrate()
    assert not duckfile.holding(store.path)
    assert burst(store, 1, start=2) == [3]


BURST_AND_EXIT = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime, timedelta
    from nexus_audit import duckfile
    from nexus_audit.model import CrawlSummary, Instance
    from nexus_audit.store import Store

    duckfile.LINGER = 3600.0  # hold from the second commit to the end
    store = Store(sys.argv[1])
    store.migrate()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for k in range(5):
        staged = store.begin_crawl("acme", ["instances"], at + timedelta(hours=k))
        staged.add_instances([Instance("i-1", f"gen-{k}", "running", "eu-1", 2, 2.0, None,
                                       "{}", None, "{}")])
        store.commit(staged, CrawlSummary(
            account="acme", kinds=("instances",), started_at=at + timedelta(hours=k),
            finished_at=at + timedelta(hours=k), status="succeeded", instances=1))
    assert duckfile.holding(store.path)
""")


def test_a_process_that_exits_leaves_the_file_whole(tmp_path: Path) -> None:
    """At exit a holder checkpoints and detaches: no write-ahead log is left, and the
    file alone holds every commit."""
    path = tmp_path / "exit.duckdb"
    done = subprocess.run([sys.executable, "-c", BURST_AND_EXIT, str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert not Path(f"{path}.wal").exists()
    assert crawl_ids(Store(path)) == [1, 2, 3, 4, 5]
