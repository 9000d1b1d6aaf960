"""The writer's hold on the database during a burst of commits (nexus_audit.history.duckfile).

A commit that follows the previous one within LINGER keeps the file attached. The stores
here reach their files through a DuckFiles of the test's own (the ``files`` fixture of
tests/files_fixtures.py) whose clock stands still unless moved, so "in a burst" never
depends on how fast this machine is, and whose idle checks run only when fired.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from nexus_audit.domain.model import CrawlSummary
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import StoreError
from nexus_audit.history import cancel as cancel_mod
from nexus_audit.history.attach import someone_waits
from nexus_audit.history.duckfile import LINGER, MAX_HOLD, DuckFiles
from nexus_audit.history.store import Store
from tests.files_fixtures import ManualTimers, OwnFiles, held_script, other_reader
from tests.test_store import T0, bucket, crawl, inst

REPO = Path(__file__).resolve().parents[1]
HOUR = timedelta(hours=1)


@pytest.fixture
def store(tmp_path: Path, files: OwnFiles) -> Store:
    """A migrated, empty store on the test's DuckFiles (every commit after the first is
    part of a burst until the clock moves)."""
    s = Store(tmp_path / "history.duckdb", lock_timeout=5.0, files=files.files)
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


def test_a_held_file_stays_locked_through_later_commits_and_reads(store: Store) -> None:
    """DuckDB's lock is a POSIX record lock, which this process loses when it closes any
    descriptor of the file: a commit or read while the file is held must not open it (the
    header check did), or another process attaches mid-burst and replays a log that is
    still being written."""
    burst(store, 2)
    assert store.files.holding(store.path)
    assert "refused" in other_reader(store.path)
    burst(store, 1, start=2)  # another commit of the burst
    assert crawl_ids(store) == [1, 2, 3]  # and a read through the hold
    assert [s.account for s in store.latest()] == ["acme"]
    assert store.files.holding(store.path)
    assert "refused" in other_reader(store.path)
    store.close()
    assert other_reader(store.path).startswith("attached")


def test_an_isolated_commit_lets_go_at_once(store: Store) -> None:
    """A commit with no recent predecessor detaches (and checkpoints) right away."""
    crawl(store, T0, instances=[inst("i-1")])
    assert not store.files.holding(store.path)
    assert not Path(f"{store.path}.wal").exists()


def test_a_burst_holds_the_file_and_reads_see_every_commit(store: Store,
                                                           tmp_path: Path) -> None:
    """From the second commit of a burst on, the file stays attached; reads in this process
    go through it and see every commit; close() checkpoints, so a copy is whole."""
    assert burst(store, 5) == [1, 2, 3, 4, 5]
    assert store.files.holding(store.path)
    assert crawl_ids(store) == [1, 2, 3, 4, 5]
    assert [s.instances[0].name for s in store.latest()] == ["gen-4"]
    store.close()
    assert not store.files.holding(store.path)
    copy = tmp_path / "copy.duckdb"
    shutil.copyfile(store.path, copy)
    assert crawl_ids(Store(copy)) == [1, 2, 3, 4, 5]


def test_a_commit_within_linger_of_the_last_starts_a_hold(store: Store,
                                                          files: OwnFiles) -> None:
    """A commit LINGER after the previous one lets go at once; one a moment less than
    LINGER after it keeps the file held (the clock, not the machine's speed, decides)."""
    burst(store, 1)
    files.clock.advance(LINGER)
    burst(store, 1, start=1)
    assert not store.files.holding(store.path)
    files.clock.advance(LINGER - 0.01)
    burst(store, 1, start=2)
    assert store.files.holding(store.path)
    assert crawl_ids(store) == [1, 2, 3]


def test_an_idle_hold_is_let_go(store: Store, files: OwnFiles) -> None:
    """The idle check lets go once no commit came for LINGER, not before (it looks again
    when it would be); a timer left from an earlier hold does nothing."""
    burst(store, 2)
    [first] = files.timers.pending
    assert first.after == LINGER
    files.clock.advance(LINGER / 2)
    assert files.timers.fire() == 1
    assert store.files.holding(store.path)
    [again] = files.timers.pending
    assert again.after == pytest.approx(LINGER / 2)
    # Let go, and hold anew: the first hold's timer going off late (its cancel came after
    # it fired) must leave the new hold alone.
    store.close()
    burst(store, 2, start=2)
    files.clock.advance(LINGER)
    first.callback()
    assert store.files.holding(store.path)
    assert files.timers.fire() == 1
    assert not store.files.holding(store.path)
    assert not Path(f"{store.path}.wal").exists()
    assert crawl_ids(store) == [1, 2, 3, 4]


def test_a_long_hold_is_let_go(store: Store, files: OwnFiles) -> None:
    """A file is held for MAX_HOLD at most, however long the burst: the commit that ends
    that long after the hold began lets go."""
    burst(store, 1)
    files.clock.advance(0.1)
    burst(store, 1, start=1)  # the hold begins
    files.clock.advance(MAX_HOLD - 0.02)
    burst(store, 1, start=2)
    assert store.files.holding(store.path)
    files.clock.advance(0.02)
    burst(store, 1, start=3)
    assert not store.files.holding(store.path)
    assert crawl_ids(store) == [1, 2, 3, 4]


def test_a_waiting_process_makes_the_holder_let_go(store: Store) -> None:
    """A fresh marker (another process retrying to attach) ends the hold at the next
    commit, and no new hold starts while it is fresh."""
    burst(store, 2)
    assert store.files.holding(store.path)
    marker = Path(f"{store.path}.wait")
    marker.touch()
    try:
        burst(store, 1, start=2)
        assert not store.files.holding(store.path)
        assert someone_waits(store.path)
    finally:
        marker.unlink()
    # A stale marker (a waiter that died) is ignored.
    marker.touch()
    os.utime(marker, (0, 0))
    try:
        assert not someone_waits(store.path)
        burst(store, 2, start=3)
        assert store.files.holding(store.path)
    finally:
        marker.unlink()
    assert crawl_ids(store) == [1, 2, 3, 4, 5]


def test_a_failed_commit_lets_go_and_the_next_one_works(store: Store) -> None:
    """A commit refused inside the hold (a count DuckDB cannot store) lets go of the file;
    nothing of it is written and the next commit continues the history."""
    burst(store, 2)
    staged = store.begin_crawl("acme", ["instances"], T0 + 2 * HOUR)
    staged.add_instances([inst("i-1")])
    with pytest.raises(StoreError, match="cannot write"):
        store.commit(staged, CrawlSummary(
            account="acme", kinds=("instances",), started_at=T0 + 2 * HOUR,
            finished_at=T0 + 2 * HOUR, status="succeeded", instances=1, requests=2**70))
    assert not store.files.holding(store.path)
    assert burst(store, 2, start=2) == [3, 4]
    assert crawl_ids(store) == [1, 2, 3, 4]


def test_stores_sharing_a_held_file_share_what_it_knows(store: Store) -> None:
    """Two Store objects on one path in one process (one DuckFiles): ids stay consecutive
    across them, and a clock step back is seen across the other's commits while the file
    is held."""
    other = Store(store.path, files=store.files)
    assert burst(store, 2) == [1, 2]
    assert crawl(other, T0 + 2 * HOUR, instances=[inst("i-1")]) == 3
    assert crawl(store, T0 + 3 * HOUR, instances=[inst("i-1")]) == 4
    assert crawl(other, T0 + 2 * HOUR, instances=[inst("i-1")]) == 5
    # Another account's first crawl during the hold asks the database, then knows.
    assert crawl(other, T0, instances=[inst("i-9")], account="globex") == 6
    assert crawl_ids(store) == [1, 2, 3, 4, 5, 6]
    with store.read() as con:
        assert con.execute("SELECT crawl_id, corrected_to FROM clock_skews").fetchall() == [
            (4, T0 + 2 * HOUR)]


def test_migrate_lets_go_first(store: Store) -> None:
    """Maintenance never runs on the writer's held attachment."""
    burst(store, 2)
    store.migrate()
    assert not store.files.holding(store.path)
    assert burst(store, 1, start=2) == [3]


BURST_AND_EXIT = held_script(5)


def assert_exits_whole(script: str, path: Path) -> None:
    """Run ``script`` on ``path`` in another process: exit code 0, no write-ahead log left,
    and the file alone holds every commit of the burst."""
    done = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert not Path(f"{path}.wal").exists()
    assert crawl_ids(Store(path)) == [1, 2, 3, 4, 5]


def test_a_process_that_exits_leaves_the_file_whole(tmp_path: Path) -> None:
    """At exit a holder checkpoints and detaches: no write-ahead log is left, and the
    file alone holds every commit."""
    assert_exits_whole(BURST_AND_EXIT, tmp_path / "exit.duckdb")


EXIT_MID_RELEASE = BURST_AND_EXIT + textwrap.dedent("""
    import threading
    import time
    from nexus_audit.history import writes

    # Let go from the hold's timer thread (the clock says it is idle now), and exit while
    # it is still settling: the exit hook must wait for it (else the process ends before
    # the checkpoint, and the log stays).
    started = threading.Event()

    def slow_settle(commit):
        started.set()
        writes.compact(commit)
        time.sleep(0.3)

    files._holds[str(store.path)].settle = slow_settle
    clock.advance(LINGER)
    assert started.wait(30)
""")


def test_exit_waits_for_a_release_under_way(tmp_path: Path) -> None:
    """A process exiting while a timer thread lets go of its file waits for it: exit code
    0, no write-ahead log left, every commit in the file."""
    assert_exits_whole(EXIT_MID_RELEASE, tmp_path / "exit.duckdb")


def scripted_history(store: Store, hours: range = range(8)) -> None:
    """Crawls where records change, vanish and come back, with a failure and two accounts
    (``hours``: the hours committed; the fleet changes at every hour all the same)."""
    fleet = {"i-1": inst("i-1"), "i-2": inst("i-2"), "i-3": inst("i-3", status="stopped")}
    buckets = {"b-1": bucket("b-1"), "b-2": bucket("b-2", access="public-read")}
    steps = [
        lambda: None,
        lambda: fleet.update({"i-2": inst("i-2", status="stopped")}),
        lambda: fleet.pop("i-3"),
        lambda: buckets.update({"b-1": bucket("b-1", size=2 * 10**9)}),
        lambda: buckets.pop("b-2"),
        lambda: fleet.update({"i-3": inst("i-3", tags='{"env":"prod"}')}),
        lambda: buckets.update({"b-2": bucket("b-2")}),
        lambda: fleet.update({"i-1": inst("i-1", cpu=4)}),
    ]
    for hour, step in enumerate(steps):
        step()
        if hour not in hours:
            continue
        at = T0 + hour * HOUR
        crawl(store, at, instances=list(fleet.values()), buckets=list(buckets.values()))
        if hour == 3:
            crawl(store, at + HOUR / 2, instances=[], failed=True)
        crawl(store, at, instances=[inst("g-1", name=f"h{hour // 3}")], account="globex")


def all_versions(store: Store) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the three version views, sorted."""
    with store.read() as con:
        return {view: sorted(con.execute(f"SELECT * FROM {view}").fetchall(),  # noqa: S608
                             key=repr)
                for view in ("instance_versions", "bucket_versions", "bucket_sizes")}


class Ticking(FakeClock):
    """A fake clock that moves a second each time it is read: no commit is part of a
    burst."""

    def monotonic(self) -> float:
        """A second later than the last reading."""
        self.advance(1.0)
        return super().monotonic()


def test_views_answer_the_same_before_and_after_compaction(tmp_path: Path,
                                                          files: OwnFiles) -> None:
    """The same history committed one isolated commit at a time (compacted after each) and
    in one held burst (uncompacted until let go) reads the same, before and after."""
    apart = DuckFiles(Ticking(), start_timer=ManualTimers())
    try:
        isolated = Store(tmp_path / "isolated.duckdb", files=apart)
        isolated.migrate()
        scripted_history(isolated)
        assert not apart.holding(isolated.path)
        expected = all_versions(isolated)
        with isolated.read() as con:
            open_rows = con.execute(
                "SELECT count(*) FROM instance_log WHERE until_crawl IS NULL").fetchone()
        latest = [s.instances for s in isolated.latest()]
    finally:
        apart.close()
    assert open_rows == (4,)  # compacted: only the current versions (3 + globex's) are open
    # Crawl ids interleave with globex's; i-3 vanished in acme's third crawl (5) and came
    # back in its seventh (12).
    spans = {(r[1], r[-2], r[-1]) for r in expected["instance_versions"]}
    assert {("i-3", 1, 5), ("i-3", 12, None), ("i-2", 1, 3), ("i-2", 3, None)} <= spans

    held = Store(tmp_path / "held.duckdb", files=files.files)
    held.migrate()
    scripted_history(held)
    assert held.files.holding(held.path)
    assert all_versions(held) == expected
    assert [s.instances for s in held.latest()] == latest
    held.close()
    assert all_versions(held) == expected
    with held.read() as con:
        assert con.execute("SELECT count(*) FROM instance_log WHERE until_crawl IS NULL"
                           ).fetchone() == open_rows


def test_views_answer_the_same_over_a_compaction_mark_and_a_burst_after_it(
        tmp_path: Path, files: OwnFiles) -> None:
    """Compacted through the first hours (each log's mark in meta), then the rest in one
    held burst: the views end the open versions of the ids changed after the mark at
    their next rows, keep the others current, and read as the isolated history does."""
    apart = DuckFiles(Ticking(), start_timer=ManualTimers())
    try:
        isolated = Store(tmp_path / "isolated.duckdb", files=apart)
        isolated.migrate()
        scripted_history(isolated)
        expected = all_versions(isolated)
        first = Store(tmp_path / "mixed.duckdb", files=apart)
        first.migrate()
        scripted_history(first, range(4))
    finally:
        apart.close()
    mixed = Store(tmp_path / "mixed.duckdb", files=files.files)
    scripted_history(mixed, range(4, 8))
    assert mixed.files.holding(mixed.path)
    with mixed.read() as con:
        marks = dict(con.execute("SELECT key, value FROM meta WHERE key LIKE 'compacted:%'"
                                 ).fetchall())
        after = con.execute(
            "SELECT count(DISTINCT id) FROM instance_log WHERE until_crawl IS NULL "
            "AND first_crawl > $m", {"m": int(marks["compacted:instance_log"])}).fetchone()
    assert set(marks) == {"compacted:instance_log", "compacted:bucket_log",
                          "compacted:bucket_size_log"}
    assert after is not None
    assert after[0] >= 3  # ids with open rows on both sides of the mark, uncompacted
    assert all_versions(mixed) == expected
    mixed.close()
    assert all_versions(mixed) == expected
    with mixed.read() as con:  # compacted from the mark on: only current versions open
        for log, view in (("instance_log", "instance_versions"),
                          ("bucket_log", "bucket_versions"), ("bucket_size_log", "bucket_sizes")):
            assert con.execute(
                f"SELECT count(*) FILTER (removed), count(*) FROM {log} "  # noqa: S608
                "WHERE until_crawl IS NULL").fetchone() == (0, len(
                    [r for r in expected[view] if r[-1] is None])), log


# -- copies for long reads and cancelling them ---------------------------------------------


def copy_crawl_ids(store: Store) -> list[int]:
    """Every committed crawl id, read through a copy."""
    with store.read(copy=True) as con:
        return [r[0] for r in con.execute("SELECT crawl_id FROM crawls ORDER BY 1").fetchall()]


def test_a_commit_does_not_wait_for_a_long_read_of_a_copy(store: Store) -> None:
    """While a long read holds its copy open, a commit goes through (it would wait for a
    read of the file itself); the running read keeps seeing what it started with, and the
    next read sees the new crawl; the old copy is deleted once its reader is done."""
    first = burst(store, 1)
    inside = threading.Event()
    finish = threading.Event()
    seen: list[list[int]] = []

    def long_read() -> None:
        with store.read(copy=True) as con:
            inside.set()
            finish.wait(30)
            seen.append([r[0] for r in con.execute("SELECT crawl_id FROM crawls").fetchall()])

    reader = threading.Thread(target=long_read)
    reader.start()
    try:
        assert inside.wait(30)
        made = list(store.path.parent.glob(f".{store.path.name}.copies-*/*.duckdb"))
        assert len(made) == 1
        committed = threading.Thread(target=burst, args=(store, 1), kwargs={"start": 1})
        committed.start()
        committed.join(30)  # a bound for failure only: it returns at once when it works
        assert not committed.is_alive(), "the commit waited for the long read"
        assert copy_crawl_ids(store) == [*first, first[0] + 1]
    finally:
        finish.set()
        reader.join(30)
    assert seen == [first]
    assert not made[0].exists()  # retired: deleted when its last reader finished
    store.files.copies.drop()
    assert not list(store.path.parent.glob(f".{store.path.name}.copies-*"))


def test_an_unchanged_file_is_not_copied_again(store: Store) -> None:
    """Reads of an unchanged file share one copy; a commit makes the next read copy anew."""
    burst(store, 1)
    with store.read(copy=True) as a, store.read(copy=True) as b:
        assert a.execute("SELECT current_database()").fetchone() == \
            b.execute("SELECT current_database()").fetchone()
    with store.read(copy=True) as c:
        before = c.execute("SELECT current_database()").fetchone()
    burst(store, 1, start=1)
    with store.read(copy=True) as d:
        assert d.execute("SELECT current_database()").fetchone() != before
    store.files.copies.drop()


def test_a_cancelled_read_is_interrupted(store: Store) -> None:
    """A query running on a copy under ``cancellable`` stops with DuckDB's interrupt once
    cancelled, even when the cancel comes before the query starts (it is repeated)."""
    burst(store, 1)
    cancel = cancel_mod.Cancel()
    inside = threading.Event()
    outcome: list[BaseException] = []

    def slow_read() -> None:
        try:
            with cancel_mod.cancellable(cancel), store.read(copy=True) as con:
                inside.set()
                # Minutes of work unless interrupted.
                con.execute("SELECT sum(a * b) FROM range(1000000) t(a), range(1000000) u(b)"
                            ).fetchall()
        except BaseException as exc:
            outcome.append(exc)
        finally:
            cancel.finished()

    reader = threading.Thread(target=slow_read)
    reader.start()
    assert inside.wait(30)
    cancel.cancel()
    reader.join(60)  # a bound for failure only
    assert not reader.is_alive(), "the read was not interrupted"
    assert len(outcome) == 1
    # The store's reads translate DuckDB's interrupt into its own error.
    assert isinstance(outcome[0], StoreError), outcome
    assert "nterrupt" in str(outcome[0])
    with pytest.raises(duckdb.InterruptException), duckdb.connect() as con, \
            cancel.bound(con):
        pass  # refused once cancelled
    store.files.copies.drop()
