"""The history store: SCD versions, failed crawls, per-kind history, latest state, errors."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from nexus_audit.domain.model import Bucket, CrawlSummary, Instance, Kind
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import Window
from nexus_audit.errors import NoDataError, SchemaTooNewError, StoreError
from nexus_audit.history.readers import InstanceGroup
from nexus_audit.history.store import MIGRATIONS, SCHEMA_VERSION, Store
from nexus_audit.output.render import render
from nexus_audit.report import build_report

T0 = datetime(2026, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def inst(ident: str, *, status: str = "running", region: str = "eu-1", cpu: int = 2,
         memory_gb: float = 2.0, plan: str | None = "micro", tags: str = "{}",
         name: str | None = None) -> Instance:
    """An instance record with sensible defaults."""
    return Instance(ident, name or ident, status, region, cpu, memory_gb, plan, tags,
                    "2026-01-01T00:00:00Z", "{}")


def bucket(ident: str, *, access: str = "private", size: int = 10**9,
           region: str = "eu-1") -> Bucket:
    """A bucket record with sensible defaults."""
    return Bucket(ident, region, size, access, "2026-01-01T00:00:00Z", "{}", "{}")


def crawl(store: Store, at: datetime, *, instances: Sequence[Instance] | None = None,
          buckets: Sequence[Bucket] | None = None, account: str = "acme",
          failed: bool = False) -> int:
    """Commit one crawl finishing at ``at`` through the store's own API."""
    kinds: list[Kind] = []
    if instances is not None:
        kinds.append("instances")
    if buckets is not None:
        kinds.append("buckets")
    start = at - timedelta(seconds=30)
    staged = store.begin_crawl(account, kinds, start)
    if instances:
        staged.add_instances(instances)
    if buckets:
        staged.add_buckets(buckets)
    summary = CrawlSummary(
        account=account, kinds=tuple(kinds), started_at=start, finished_at=at,
        status="failed" if failed else "succeeded",
        instances=len(instances or ()), buckets=len(buckets or ()), requests=3,
        error="GET /instances: HTTP 500" if failed else None,
        error_code="internal" if failed else None,
        requests_by_endpoint={"GET /instances": {"200": 2}})
    if failed:
        return store.record_failure(summary, staged)
    return store.commit(staged, summary)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A migrated, empty store in a temporary directory."""
    s = Store(tmp_path / "history.duckdb", lock_timeout=2.0)
    s.migrate()
    return s


def versions(store: Store, table: str) -> list[tuple[object, ...]]:
    """All (id, first_crawl, until_crawl) rows of a version table, sorted."""
    with store.read() as con:
        return con.execute(
            f"SELECT id, first_crawl, until_crawl FROM {table} ORDER BY id, first_crawl"  # noqa: S608
        ).fetchall()


def test_identical_crawls_store_one_version(store: Store) -> None:
    """A fleet that does not change costs one row per resource, not one per crawl."""
    for hour in range(5):
        crawl(store, T0 + timedelta(hours=hour), instances=[inst("i-1"), inst("i-2")],
              buckets=[bucket("b-1")])
    assert versions(store, "instance_versions") == [("i-1", 1, None), ("i-2", 1, None)]
    assert versions(store, "bucket_versions") == [("b-1", 1, None)]
    assert versions(store, "bucket_sizes") == [("b-1", 1, None)]


def test_changes_close_and_open_versions(store: Store) -> None:
    """A changed field closes the old version and opens a new one; a missing id closes."""
    crawl(store, T0, instances=[inst("i-1"), inst("i-2")])
    crawl(store, T0 + timedelta(hours=1), instances=[inst("i-1", tags='{"env":"prod"}')])
    crawl(store, T0 + timedelta(hours=2), instances=[inst("i-1", tags='{"env":"prod"}'),
                                                     inst("i-3")])
    assert versions(store, "instance_versions") == [
        ("i-1", 1, 2), ("i-1", 2, None), ("i-2", 1, 2), ("i-3", 3, None)]


def test_bucket_size_change_touches_only_sizes(store: Store) -> None:
    """A size change is usage: a new size row, the bucket's version stays."""
    crawl(store, T0, buckets=[bucket("b-1", size=100)])
    crawl(store, T0 + timedelta(minutes=1), buckets=[bucket("b-1", size=200)])
    assert versions(store, "bucket_versions") == [("b-1", 1, None)]
    assert versions(store, "bucket_sizes") == [("b-1", 1, 2), ("b-1", 2, None)]


def test_compaction_runs_on_the_logs_a_commit_appended_to(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit compacts the logs it appended to (every log of its kinds when set-based)
    and no other: an unchanged fleet runs no compaction; the logs still end compacted."""
    from nexus_audit.history import duckfile, writes
    from nexus_audit.history import store as store_module

    compacted: list[list[str]] = []

    def spy(commit: duckfile.Commit) -> None:
        compacted.append(sorted(commit.memo.get(writes.DIRTY) or ()))
        writes.compact(commit)

    monkeypatch.setattr(store_module, "compact", spy)
    monkeypatch.setattr(duckfile, "LINGER", -1.0)  # every commit lets go (and compacts)
    fleet = [inst("i-1"), inst("i-2")]
    crawl(store, T0, instances=fleet, buckets=[bucket("b-1")])  # set-based: all three
    crawl(store, T0 + HOUR, instances=fleet, buckets=[bucket("b-1")])  # nothing changed
    crawl(store, T0 + 2 * HOUR, instances=fleet, buckets=[bucket("b-1", size=2)])
    crawl(store, T0 + 3 * HOUR, instances=fleet[:1],
          buckets=[bucket("b-1", size=2, access="public-read")])
    assert compacted == [["bucket_log", "bucket_size_log", "instance_log"], [],
                         ["bucket_size_log"], ["bucket_log", "instance_log"]]
    with store.read() as con:
        open_rows = [con.execute(f"SELECT count(*) FROM {log} "  # noqa: S608
                                 "WHERE until_crawl IS NULL").fetchone()
                     for log in ("instance_log", "bucket_log", "bucket_size_log")]
    assert open_rows == [(1,), (1,), (1,)]


def test_failed_crawl_changes_no_history(store: Store) -> None:
    """A failed crawl writes its row only: nothing is closed, even with records staged."""
    crawl(store, T0, instances=[inst("i-1"), inst("i-2")])
    failed_id = crawl(store, T0 + timedelta(hours=1), instances=[inst("i-1")], failed=True)
    assert failed_id == 2
    assert versions(store, "instance_versions") == [("i-1", 1, None), ("i-2", 1, None)]
    with store.read() as con:
        assert con.execute("SELECT status, error_code FROM crawls WHERE crawl_id = 2"
                           ).fetchone() == ("failed", "internal")


def test_commit_refused_midway_leaves_no_trace(store: Store) -> None:
    """A commit that DuckDB refuses after the crawl's row went in (a changed record whose
    value does not fit its column) rolls back whole: no crawl row, no version; the next
    crawl commits under the id the refused one would have had."""
    crawl(store, T0, instances=[inst("i-1"), inst("i-2")])
    bad = inst("i-2")._replace(cpu="many")
    with pytest.raises(StoreError, match="many"):
        crawl(store, T0 + HOUR, instances=[inst("i-1"), bad])
    with store.read() as con:
        assert con.execute("SELECT crawl_id FROM crawls").fetchall() == [(1,)]
    assert versions(store, "instance_versions") == [("i-1", 1, None), ("i-2", 1, None)]
    assert crawl(store, T0 + 2 * HOUR, instances=[inst("i-1"), inst("i-2", cpu=4)]) == 2
    assert versions(store, "instance_versions") == [
        ("i-1", 1, None), ("i-2", 1, 2), ("i-2", 2, None)]


def test_bucket_only_crawl_keeps_instances(store: Store) -> None:
    """A crawl that did not cover instances never removes them."""
    crawl(store, T0, instances=[inst("i-1")], buckets=[bucket("b-1")])
    crawl(store, T0 + timedelta(minutes=1), buckets=[])
    assert versions(store, "instance_versions") == [("i-1", 1, None)]
    assert versions(store, "bucket_versions") == [("b-1", 1, 2)]


def test_duplicate_ids_in_one_crawl_keep_one_version(store: Store) -> None:
    """An id seen twice by one crawl (pages shifting) yields one current version."""
    crawl(store, T0, instances=[inst("i-1", status="pending"), inst("i-1")])
    with store.read() as con:
        assert con.execute("SELECT id, status FROM instance_versions").fetchall() == [
            ("i-1", "running")]


def test_a_clock_step_back_re_dates_the_earlier_crawls(store: Store) -> None:
    """A crawl finishing before crawls already committed for its account and kind (the
    clock stepped back 30 days) is committed; in the same transaction the earlier crawls
    are re-dated to its end and each correction is kept, so the report over the real
    time orders them consistently and says what was corrected."""
    ahead = T0 + timedelta(days=30)
    crawl(store, T0 - HOUR, instances=[inst("i-0")])  # before the skew: untouched
    crawl(store, ahead, instances=[inst("i-1")])  # the clock 30 days ahead
    crawl(store, ahead + HOUR, instances=[inst("i-1")], failed=True)
    crawl(store, ahead, buckets=[bucket("b-1")])  # another kind: untouched
    with capture_logs() as logs:
        assert crawl(store, T0, instances=[inst("i-1"), inst("i-2")]) == 5
    with store.read() as con:
        dates = con.execute("SELECT crawl_id, started_at, finished_at FROM crawls "
                            "ORDER BY crawl_id").fetchall()
        skews = con.execute("SELECT * FROM clock_skews ORDER BY crawl_id").fetchall()
    assert [(c, f) for c, _, f in dates] == [
        (1, T0 - HOUR), (2, T0), (3, T0), (4, ahead), (5, T0)]
    assert all(started <= finished for _, started, finished in dates)
    assert [(c, a, rs, rf, to, by) for c, a, rs, rf, to, by, _ in skews] == [
        (2, "acme", ahead - timedelta(seconds=30), ahead, T0, 5),
        (3, "acme", ahead + HOUR - timedelta(seconds=30), ahead + HOUR, T0, 5)]
    [event] = [e for e in logs if e["event"] == "store.clock_skew"]
    assert event["log_level"] == "warning"
    assert event["seconds"] == (30 * 24 + 1) * 3600
    assert event["redated"] == [2, 3]
    assert versions(store, "instance_versions") == [
        ("i-0", 1, 2), ("i-1", 2, None), ("i-2", 5, None)]
    (state,) = store.latest()
    assert state.instances_as_of == T0
    assert state.clock_corrections == {"instances": 2}
    report = build_report(store, Window(T0 - 2 * HOUR, T0 + HOUR), stale_after=7 * 24 * HOUR,
                          pending_stale_after=HOUR, max_gap_instances=2 * HOUR,
                          max_gap_buckets=2 * HOUR, pricing=load_pricing(None), now=T0 + HOUR)
    assert report.inventory.instances_total == 2
    assert [(d.id, d.change, d.observed_at) for d in report.drift] == [
        ("i-0", "removed", T0), ("i-1", "added", T0), ("i-2", "added", T0)]
    skewed = report.to_json_dict()["crawls"]["clock_skews"]
    assert [(k["crawl_id"], k["corrected_to"], k["seconds"], k["detected_by_crawl"])
            for k in skewed] == [(2, "2026-03-01T00:00:00Z", 30 * 24 * 3600, 5),
                                 (3, "2026-03-01T00:00:00Z", (30 * 24 + 1) * 3600, 5)]
    table = render(report, "table")
    assert "clock skews  2 re-dated (clock stepped back)" in table
    assert "acme     3      2026-03-31T01:00:00Z  2026-03-01T00:00:00Z  2595600" in table
    assert "| acme | 3 | 2026-03-31T01:00:00Z | 2026-03-01T00:00:00Z | 2595600 |" in render(
        report, "markdown")
    assert ("clock_skew,acme,,2,,,,,,,,,2026-03-31T00:00:00Z,2026-03-01T00:00:00Z,,"
            "seconds,2592000.0") in render(report, "csv").splitlines()
    # Recording goes on: the next crawl on the stepped-back clock commits normally.
    assert crawl(store, T0 + HOUR, instances=[inst("i-2")]) == 6


def test_a_re_dated_crawl_of_both_kinds_pulls_the_other_kind_along(store: Store) -> None:
    """A re-dated crawl that covered both kinds moves the earlier crawls of the other kind
    too, so finished_at never decreases along either kind's crawls; a later crawl of the
    other kind alone is left alone."""
    ahead = T0 + timedelta(days=1)
    crawl(store, ahead - HOUR, instances=[inst("i-1")])
    crawl(store, ahead, instances=[inst("i-1")], buckets=[bucket("b-1")])
    crawl(store, ahead + HOUR, instances=[inst("i-1")])
    crawl(store, T0, buckets=[bucket("b-1")])
    with store.read() as con:
        assert con.execute("SELECT crawl_id, finished_at FROM crawls ORDER BY crawl_id"
                           ).fetchall() == [(1, T0), (2, T0), (3, ahead + HOUR), (4, T0)]
        assert con.execute("SELECT crawl_id FROM clock_skews ORDER BY 1").fetchall() == [
            (1,), (2,)]
    # The memo of the other kind was dropped: its next commit sees the corrected dates.
    assert crawl(store, ahead + 2 * HOUR, instances=[inst("i-1")]) == 5


def test_latest_state_and_previous_regions(store: Store) -> None:
    """latest() shows each kind as of its last success, plus last crawl and counts."""
    crawl(store, T0, instances=[inst("i-1", region="eu-1"), inst("i-2", region="us-2")],
          buckets=[bucket("b-1", size=5)])
    crawl(store, T0 + timedelta(minutes=1), buckets=[bucket("b-1", size=7)])
    crawl(store, T0 + timedelta(hours=1), instances=[inst("i-1")], failed=True)
    [state] = store.latest()
    assert state.account == "acme"
    assert [i.id for i in state.instances] == ["i-1", "i-2"]
    assert state.buckets == (bucket("b-1", size=7),)
    assert state.instances_as_of == T0
    assert state.buckets_as_of == T0 + timedelta(minutes=1)
    assert state.last_crawl["instances"].status == "failed"
    assert state.last_crawl["instances"].error_code == "internal"
    assert state.last_crawl["buckets"].status == "succeeded"
    assert state.last_crawl["buckets"].seconds == 30.0
    assert state.last_success == {"instances": T0, "buckets": T0 + timedelta(minutes=1)}
    assert state.crawls_by_status == {"succeeded": 2, "failed": 1}
    assert store.previous_regions("acme") == ["eu-1", "us-2"]
    assert store.previous_regions("other") == []


def test_latest_without_records_counts_the_instances_by_shape(store: Store) -> None:
    """latest(records=False) leaves the instance records out and counts the current
    instances of each account by region, status and shape instead (a version replaced
    or removed since counts no more)."""
    crawl(store, T0, instances=[inst("i-1"), inst("i-2"), inst("i-3", status="stopped"),
                                inst("i-4", plan=None, cpu=3, memory_gb=7.5)])
    crawl(store, T0 + HOUR, instances=[inst("i-1"), inst("i-2", region="us-1"),
                                       inst("i-3", status="stopped"), inst("i-5")])
    crawl(store, T0, instances=[inst("g-1")], account="globex")
    acme, globex = store.latest(records=False)
    assert acme.instances == ()
    assert acme.instance_groups == (
        InstanceGroup("eu-1", "running", "micro", 2, 2.0, number=2),
        InstanceGroup("eu-1", "stopped", "micro", 2, 2.0, number=1),
        InstanceGroup("us-1", "running", "micro", 2, 2.0, number=1))
    assert globex.instance_groups == (InstanceGroup("eu-1", "running", "micro", 2, 2.0, 1),)
    assert [s.instance_groups for s in store.latest()] == [(), ()]
    assert [s.last_success for s in store.latest(records=False)] == [
        s.last_success for s in store.latest()]


def test_discarded_crawl_leaves_nothing(store: Store) -> None:
    """discard() drops staged records; a discarded crawl cannot be committed."""
    staged = store.begin_crawl("acme", ["instances"], T0)
    staged.add_instances([inst("i-1")])
    staged.discard()
    with pytest.raises(StoreError, match="already committed or discarded"):
        staged.add_instances([inst("i-2")])
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM instance_versions").fetchone() == (0,)


def test_begin_crawl_rejects_bad_kinds(store: Store) -> None:
    """A crawl must cover known kinds, and records must match the kinds it covers."""
    with pytest.raises(StoreError, match="one or more of"):
        store.begin_crawl("acme", [], T0)
    with pytest.raises(StoreError, match="one or more of"):
        store.begin_crawl("acme", ["volumes"], T0)  # type: ignore[list-item]
    staged = store.begin_crawl("acme", ["buckets"], T0)
    with pytest.raises(StoreError, match="does not cover instances"):
        staged.add_instances([inst("i-1")])
    staged.discard()


def test_missing_database_is_not_created(tmp_path: Path) -> None:
    """Reading a database that does not exist says so and creates nothing."""
    path = tmp_path / "absent.duckdb"
    with pytest.raises(NoDataError, match="no history database"), Store(path).read():
        pass
    assert not path.exists()


def test_non_duckdb_file_is_refused_untouched(tmp_path: Path) -> None:
    """A file that is not a DuckDB database raises StoreError and keeps its bytes."""
    path = tmp_path / "notes.duckdb"
    content = b"these are my notes, not a database\n" * 20
    path.write_bytes(content)
    with pytest.raises(StoreError, match="not a DuckDB database"):
        Store(path).migrate()
    with pytest.raises(StoreError, match="not a DuckDB database"), Store(path).read():
        pass
    assert path.read_bytes() == content


def test_older_schema_upgrades_in_place(tmp_path: Path) -> None:
    """A version-1 database with history upgrades to the current schema, history intact."""
    import duckdb

    s = Store(tmp_path / "old.duckdb")
    s.migrate(target=1)
    with duckdb.connect(str(s.path)) as con:  # history as version 1 wrote it
        con.execute("""INSERT INTO crawls VALUES (1, 'acme', ['instances'], $t, $t,
                       'succeeded', 1, 0, 1, 0, NULL, NULL, NULL, NULL, '{}')""", {"t": T0})
        con.execute("""INSERT INTO instance_versions VALUES ('acme', 'i-1', 'i-1', 'running',
                       'eu-1', 2, 2.0, 'micro', '{}', NULL, '{}', 1, NULL)""")
    with pytest.raises(StoreError, match="older than"), s.read():
        pass
    s.migrate()
    with s.read() as con:
        assert con.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
        assert con.execute("SELECT crawl_id, kind FROM kind_crawls").fetchall() == [
            (1, "instances")]
        assert con.execute("SELECT id FROM instance_versions").fetchall() == [("i-1",)]


def test_version_2_history_upgrades_to_logs_and_views(tmp_path: Path) -> None:
    """Version 2 kept until_crawl in the version tables; version 3 renames them to logs
    behind views of the same names and columns: every row reads the same, and crawls
    commit on top of the upgraded history."""
    import duckdb

    s = Store(tmp_path / "v2.duckdb")
    s.migrate(target=2)
    with duckdb.connect(str(s.path)) as con:  # two crawls as version 2 wrote them
        for crawl_id in (1, 2):
            con.execute("""INSERT INTO crawls VALUES ($c, 'acme', ['instances', 'buckets'],
                           $t, $t, 'succeeded', 1, 1, 1, 0, NULL, NULL, NULL, NULL, '{}')""",
                        {"c": crawl_id, "t": T0 + timedelta(hours=crawl_id)})
        con.execute("""INSERT INTO instance_versions VALUES
            ('acme', 'i-1', 'i-1', 'running', 'eu-1', 2, 2.0, 'micro', '{}', $c, '{}', 1, 2),
            ('acme', 'i-1', 'i-1', 'stopped', 'eu-1', 2, 2.0, 'micro', '{}', $c, '{}', 2,
             NULL)""", {"c": "2026-01-01T00:00:00Z"})
        con.execute("""INSERT INTO bucket_versions VALUES
            ('acme', 'b-1', 'eu-1', 'private', NULL, '{}', '{}', 1, NULL)""")
        con.execute("""INSERT INTO bucket_sizes VALUES ('acme', 'b-1', 5, 1, 2),
                                                       ('acme', 'b-1', 7, 2, NULL)""")
    s.migrate()
    assert versions(s, "instance_versions") == [("i-1", 1, 2), ("i-1", 2, None)]
    assert versions(s, "bucket_versions") == [("b-1", 1, None)]
    assert versions(s, "bucket_sizes") == [("b-1", 1, 2), ("b-1", 2, None)]
    crawl(s, T0 + 3 * HOUR, instances=[inst("i-1", status="stopped")], buckets=[])
    assert versions(s, "instance_versions") == [("i-1", 1, 2), ("i-1", 2, None)]
    assert versions(s, "bucket_versions") == [("b-1", 1, 3)]
    assert versions(s, "bucket_sizes") == [("b-1", 1, 2), ("b-1", 2, 3)]


def test_version_3_history_upgrades_and_a_step_back_then_commits(tmp_path: Path) -> None:
    """Version 4 adds the clock_skews log: a version-3 file with a crawl dated 30 days
    ahead (once refusing every later commit) upgrades in place, and the next crawl on the
    right clock commits and re-dates it."""
    import duckdb

    s = Store(tmp_path / "v3.duckdb")
    s.migrate(target=3)
    ahead = T0 + timedelta(days=30)
    with duckdb.connect(str(s.path)) as con:  # a crawl as version 3 wrote it
        con.execute("""INSERT INTO crawls VALUES (1, 'acme', ['instances'], $t, $t,
                       'succeeded', 1, 0, 1, 0, NULL, NULL, NULL, NULL, '{}')""", {"t": ahead})
        con.execute("""INSERT INTO instance_log VALUES ('acme', 'i-1', 'i-1', 'running',
                       'eu-1', 2, 2.0, 'micro', '{}', NULL, '{}', 1, NULL, false)""")
    s.migrate()
    with s.read() as con:
        assert con.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
        assert con.execute("SELECT count(*) FROM clock_skews").fetchone() == (0,)
    assert crawl(s, T0, instances=[inst("i-1")]) == 2
    with s.read() as con:
        assert con.execute("SELECT crawl_id, recorded_finished_at, corrected_to, "
                           "detected_by_crawl FROM clock_skews").fetchall() == [
            (1, ahead, T0, 2)]
        assert con.execute("SELECT finished_at FROM crawls WHERE crawl_id = 1"
                           ).fetchone() == (T0,)


def test_newer_schema_is_refused(store: Store) -> None:
    """A database from a newer nexus-audit is refused by both writer and reader, unchanged."""
    import duckdb

    with duckdb.connect(str(store.path)) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    before = store.path.read_bytes()
    with pytest.raises(SchemaTooNewError, match=rf"version 99.*\({SCHEMA_VERSION}\)"):
        store.migrate()
    with pytest.raises(SchemaTooNewError), store.read():
        pass
    assert store.path.read_bytes() == before


def test_migrations_are_ordered() -> None:
    """Migration versions strictly increase (a new one is appended, never inserted)."""
    numbers = [v for v, _ in MIGRATIONS]
    assert numbers == sorted(set(numbers))
    assert numbers[0] == 1


def test_stale_snapshot_falls_back_to_full_compare(tmp_path: Path) -> None:
    """Two writers on one file: a snapshot made stale by the other is not trusted."""
    path = tmp_path / "shared.duckdb"
    first, second = Store(path), Store(path)
    first.migrate()
    crawl(first, T0, instances=[inst("i-1"), inst("i-2")])
    crawl(second, T0 + timedelta(hours=1), instances=[inst("i-1")])
    crawl(first, T0 + timedelta(hours=2), instances=[inst("i-1"), inst("i-2")])
    assert versions(first, "instance_versions") == [
        ("i-1", 1, None), ("i-2", 1, 2), ("i-2", 3, None)]


def test_diff_path_handles_removal_change_and_duplicates(store: Store) -> None:
    """After the first commit only differences are staged: still exact history."""
    crawl(store, T0, instances=[inst("i-1"), inst("i-2"), inst("i-3")],
          buckets=[bucket("b-1", size=1), bucket("b-2")])
    crawl(store, T0 + timedelta(hours=1),
          instances=[inst("i-1"), inst("i-2", status="stopped"), inst("i-2", status="pending")],
          buckets=[bucket("b-1", size=2)])
    crawl(store, T0 + timedelta(hours=2),
          instances=[inst("i-1"), inst("i-2", status="pending")], buckets=[bucket("b-1", size=2)])
    assert versions(store, "instance_versions") == [
        ("i-1", 1, None), ("i-2", 1, 2), ("i-2", 2, None), ("i-3", 1, 2)]
    assert versions(store, "bucket_versions") == [("b-1", 1, None), ("b-2", 1, 2)]
    assert versions(store, "bucket_sizes") == [("b-1", 1, 2), ("b-1", 2, None), ("b-2", 1, 2)]
    [state] = store.latest()
    assert [(i.id, i.status) for i in state.instances] == [("i-1", "running"),
                                                          ("i-2", "pending")]


def test_duplicate_seen_last_wins_across_batches(store: Store) -> None:
    """An id changed on one page and seen unchanged on a later page keeps the later record."""
    crawl(store, T0, instances=[inst("i-1")])
    staged = store.begin_crawl("acme", ["instances"], T0 + timedelta(hours=1))
    staged.add_instances([inst("i-1", status="stopped")])
    staged.add_instances([inst("i-1")])
    store.commit(staged, CrawlSummary(account="acme", kinds=("instances",),
                                      started_at=T0 + timedelta(hours=1),
                                      finished_at=T0 + timedelta(hours=1), status="succeeded"))
    assert versions(store, "instance_versions") == [("i-1", 1, None)]


def test_a_fleet_too_large_to_remember_still_keeps_the_record_seen_last(
        tmp_path: Path) -> None:
    """Past ``remember_rows`` records a crawl keeps no fingerprints (no snapshot: the next
    crawl is compared in full); an id staged twice after that is found by DuckDB, and the
    record seen last is the version kept."""
    store = Store(tmp_path / "history.duckdb", lock_timeout=2.0, remember_rows=1)
    store.migrate()
    for hour, name in ((1, "renamed"), (2, "again")):
        at = T0 + timedelta(hours=hour)
        staged = store.begin_crawl("acme", ["instances"], at)
        staged.add_instances([inst("i-1"), inst("i-2")])
        staged.add_instances([inst("i-1", name=name)])
        store.commit(staged, CrawlSummary(account="acme", kinds=("instances",),
                                          started_at=at, finished_at=at, status="succeeded"))
        assert not store._snapshots  # private on purpose: what the Store keeps in memory
    assert versions(store, "instance_versions") == [
        ("i-1", 1, 2), ("i-1", 2, None), ("i-2", 1, None)]
    [state] = store.latest()
    assert [(i.id, i.name) for i in state.instances] == [("i-1", "again"), ("i-2", "i-2")]


def test_stale_snapshot_restages_skipped_records_from_history(tmp_path: Path) -> None:
    """A record skipped as unchanged against a stale snapshot is compared as that crawl saw it."""
    path = tmp_path / "shared.duckdb"
    first, second = Store(path), Store(path)
    first.migrate()
    crawl(first, T0, instances=[inst("i-1"), inst("i-2")], buckets=[bucket("b-1", size=1)])
    crawl(second, T0 + timedelta(hours=1), instances=[inst("i-1", status="stopped"),
                                                      inst("i-2")],
          buckets=[bucket("b-1", size=2, access="public-read")])
    # Unchanged against first's snapshot (crawl 1), changed against the history (crawl 2).
    crawl(first, T0 + timedelta(hours=2), instances=[inst("i-1"), inst("i-2")],
          buckets=[bucket("b-1", size=1)])
    assert versions(first, "instance_versions") == [
        ("i-1", 1, 2), ("i-1", 2, 3), ("i-1", 3, None), ("i-2", 1, None)]
    assert versions(first, "bucket_versions") == [("b-1", 1, 2), ("b-1", 2, 3), ("b-1", 3, None)]
    assert versions(first, "bucket_sizes") == [("b-1", 1, 2), ("b-1", 2, 3), ("b-1", 3, None)]


def test_replaced_database_fails_once_then_compares_in_full(tmp_path: Path) -> None:
    """If the file is replaced under a Store, its snapshot cannot be trusted: that commit
    fails with a clear error and the next one writes exact history."""
    path = tmp_path / "history.duckdb"
    store = Store(path)
    store.migrate()
    crawl(store, T0, instances=[inst("i-1"), inst("i-2")])
    path.unlink()
    other = Store(path)
    other.migrate()
    crawl(other, T0, instances=[inst("i-9")])
    crawl(other, T0 + timedelta(hours=1), instances=[inst("i-9")])
    with pytest.raises(StoreError, match="is gone"):
        crawl(store, T0 + timedelta(hours=2), instances=[inst("i-1"), inst("i-2")])
    crawl(store, T0 + timedelta(hours=3), instances=[inst("i-1"), inst("i-2")])
    assert versions(store, "instance_versions") == [
        ("i-1", 3, None), ("i-2", 3, None), ("i-9", 1, 3)]


def test_diff_path_writes_the_same_history_as_the_full_comparison(tmp_path: Path) -> None:
    """Random churn (changes, removals, re-adds, many changes at once, a repeated id) gives
    identical history whether committed against a snapshot or compared in full each time."""
    import random

    rng = random.Random(5)
    fleet = {f"i-{n}": inst(f"i-{n}") for n in range(120)}
    disks = {f"b-{n}": bucket(f"b-{n}", size=n) for n in range(20)}
    diffing = Store(tmp_path / "diff.duckdb")
    diffing.migrate()
    full_path = tmp_path / "full.duckdb"
    Store(full_path).migrate()
    for hour in range(10):
        many = 90 if hour == 4 else 6  # past the small-list threshold once
        for ident in rng.sample(sorted(fleet), k=many):
            roll = rng.random()
            if roll < 0.2:
                del fleet[ident]
            else:
                # Plans absent on some hours only: a column of NULLs in one commit.
                fleet[ident] = inst(ident, status=rng.choice(("running", "stopped")),
                                    cpu=rng.choice((2, 4)), tags=rng.choice(("{}", '{"a":1}')),
                                    plan=None if hour % 3 == 1 else "micro",
                                    memory_gb=rng.choice((2.0, 0.5)))
        fleet[f"i-new-{hour}"] = inst(f"i-new-{hour}", plan=None if hour % 3 == 1 else "micro")
        for ident in rng.sample(sorted(disks), k=5):
            old = disks[ident]
            disks[ident] = (old._replace(size_bytes=old.size_bytes + 1) if rng.random() < 0.7
                            else old._replace(access=rng.choice(("private", "public-read"))))
        instances = list(fleet.values())
        if hour == 7:  # pages shifted: one id seen twice, the later record wins
            instances.append(instances[0]._replace(status="pending"))
        at = T0 + timedelta(hours=hour)
        crawl(diffing, at, instances=instances, buckets=list(disks.values()))
        crawl(Store(full_path), at, instances=instances, buckets=list(disks.values()))
    full = Store(full_path)
    for table in ("instance_versions", "bucket_versions", "bucket_sizes"):
        assert versions(diffing, table) == versions(full, table)
    assert diffing.latest() == full.latest()
