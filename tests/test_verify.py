"""The evidence chain: sealed at commit, recomputed by ``verify``, broken by any edit."""

# S608: the tampering SQL is built from this file's own constants and crawl ids.
# ruff: noqa: S608

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from nexus_audit.cli import main
from nexus_audit.history import sealing
from nexus_audit.history import store as store_module
from nexus_audit.history.chain import StateSum, element, row_line
from nexus_audit.history.staging import REMEMBER_ROWS
from nexus_audit.history.store import Store
from nexus_audit.history.verify import ChainBrokenError, Verified, verify_history
from tests.test_store import T0, bucket, crawl, inst

HOUR = timedelta(hours=1)


def build_history(path: Path, remember_rows: int = REMEMBER_ROWS) -> dict[str, int]:
    """Two accounts, both kinds, changes, removals, a failed crawl and a second writer;
    returns the crawl ids by name."""
    store = Store(path, lock_timeout=5.0, remember_rows=remember_rows)
    store.migrate()
    ids: dict[str, int] = {}
    fleet = [inst("i-1"), inst("i-2", status="stopped"), inst("i-3", memory_gb=4)]
    ids["first"] = crawl(store, T0, instances=fleet,
                         buckets=[bucket("b-1"), bucket("b-2", access="public-read")])
    ids["beta"] = crawl(store, T0 + HOUR / 2, instances=[inst("i-9")], account="beta")
    # The same Store: the diff path (a status change, a removal, a new id, a size change).
    fleet = [inst("i-1", status="stopped"), inst("i-3", memory_gb=4), inst("i-4")]
    ids["changed"] = crawl(store, T0 + HOUR, instances=fleet,
                           buckets=[bucket("b-1", size=2 * 10**9), bucket("b-2")])
    ids["failed"] = crawl(store, T0 + 2 * HOUR, instances=fleet, failed=True)
    ids["buckets"] = crawl(store, T0 + 3 * HOUR, buckets=[bucket("b-1", size=3 * 10**9)])
    store.close()
    # Another writer (no memory of the sums: they are read back in full).
    other = Store(path, lock_timeout=5.0, remember_rows=remember_rows)
    ids["other"] = crawl(other, T0 + 4 * HOUR, instances=[*fleet, inst("i-5")],
                         buckets=[bucket("b-1", size=3 * 10**9), bucket("b-3")])
    ids["last"] = crawl(other, T0 + 5 * HOUR, instances=[*fleet, inst("i-5", region="eu-2")],
                        buckets=[bucket("b-3")])
    other.close()
    return ids


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A database with a varied history, let go of."""
    path = tmp_path / "history.duckdb"
    return path, build_history(path)


def verify(path: Path, **kwargs: object) -> Verified:
    """verify_history on a read-only connection of the store."""
    with Store(path).read() as con:
        return verify_history(con, **kwargs)  # type: ignore[arg-type]


def tamper(path: Path, sql: str) -> None:
    """Run ``sql`` on the database with plain DuckDB, as someone with write access could."""
    con = duckdb.connect(str(path))
    try:
        con.execute(sql)
    finally:
        con.close()


def test_untouched_history_verifies(history: tuple[Path, dict[str, int]]) -> None:
    """Every crawl (diffed, set-based, failed, another writer's) verifies, and the head is
    the last manifest's hash."""
    path, ids = history
    result = verify(path)
    assert result.crawls == len(ids)
    with Store(path).read() as con:
        rows = con.execute("SELECT seq, crawl_id, hash, body FROM manifests ORDER BY seq"
                           ).fetchall()
    assert [r[1] for r in rows] == sorted(ids.values())
    assert [r[0] for r in rows] == list(range(1, len(ids) + 1))
    assert result.head == rows[-1][2]
    assert not result.genesis
    for _seq, _crawl, digest, body in rows:
        assert hashlib.sha256(body.encode()).hexdigest() == digest
    failed = json.loads(rows[[r[1] for r in rows].index(ids["failed"])][3])
    assert "state" not in failed
    assert failed["crawl"]["status"] == "failed"


def test_a_store_remembering_nothing_seals_the_same_chain(tmp_path: Path) -> None:
    """A Store that remembers no snapshot and no row elements between commits (as for a
    fleet of more than ``remember_rows``: a million instances) commits every crawl
    set-based, reads every state back in full, and seals byte for byte the chain of a
    Store that remembers."""
    chains = []
    for remember in (REMEMBER_ROWS, 0):
        path = tmp_path / f"remember-{remember}.duckdb"
        ids = build_history(path, remember_rows=remember)
        with Store(path).read() as con:
            chains.append(con.execute("SELECT seq, body FROM manifests ORDER BY seq"
                                      ).fetchall())
        assert verify(path).crawls == len(ids)
    assert chains[0] == chains[1]


def test_a_large_commit_compacts_before_its_seal_reads_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit of more records than the Store remembers compacts the log of each view it
    reads back in full, in its own transaction, before reading it (so the view reads its
    rows as they are, not through its window over every open row); a commit the Store
    remembers does not. Either way the history is row for row the same, and verifies."""
    compacted: list[str] = []
    real = store_module.compact_log

    def recorded(commit: Any, log: str) -> None:
        compacted.append(log)
        real(commit, log)

    monkeypatch.setattr(store_module, "compact_log", recorded)
    paths = {remember: tmp_path / f"remember-{remember}.duckdb" for remember in (0, 10)}
    calls = {}
    for remember, path in paths.items():
        store = Store(path, lock_timeout=5.0, remember_rows=remember)
        store.migrate()
        crawl(store, T0, instances=[inst("i-1"), inst("i-2")], buckets=[bucket("b-1")])
        crawl(store, T0 + HOUR, instances=[inst("i-1", status="stopped"), inst("i-3")],
              buckets=[bucket("b-1", size=5)])
        store.close()
        calls[remember], compacted[:] = list(compacted), []
    # The first commit reads each view back in full; the second moves the sums it kept.
    assert calls == {0: ["instance_log", "bucket_log", "bucket_size_log"], 10: []}
    rows = []
    for path in paths.values():
        with Store(path).read() as con:
            rows.append([con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                         for t in ("instance_log", "bucket_log", "bucket_size_log")])
        assert verify(path).crawls == 2
    assert rows[0] == rows[1]


def test_a_store_remembers_fleets_up_to_its_limit(tmp_path: Path) -> None:
    """A Store keeps a kind's snapshot and its views' elements for the next commit only
    up to ``remember_rows`` records (a million instances' took 300 MB); past it the next
    crawl of that kind is compared in full and its views keep their sums alone, and the
    history stays verifiable."""
    store = Store(tmp_path / "history.duckdb", lock_timeout=5.0, remember_rows=2)
    store.migrate()
    # What the Store remembers between commits (private on purpose: memory, not behaviour).
    snapshots, states = store._snapshots, store._states
    views = {("acme", v) for v in ("instance_versions", "bucket_versions", "bucket_sizes")}

    def with_elements() -> set[tuple[str, str]]:
        return {key for key, state in states.items() if state.elements is not None}

    crawl(store, T0, instances=[inst("i-1"), inst("i-2")], buckets=[bucket("b-1")])
    assert set(snapshots) == {("acme", "instances"), ("acme", "buckets")}
    assert set(states) == with_elements() == views
    crawl(store, T0 + HOUR, instances=[inst("i-1"), inst("i-2"), inst("i-3")],
          buckets=[bucket("b-1")])
    assert set(snapshots) == {("acme", "buckets")}
    assert with_elements() == {("acme", "bucket_versions"), ("acme", "bucket_sizes")}
    assert set(states) == views
    crawl(store, T0 + 2 * HOUR, instances=[inst("i-1"), inst("i-2", status="stopped")],
          buckets=[bucket("b-1"), bucket("b-2"), bucket("b-3")])
    assert set(snapshots) == {("acme", "instances")}
    assert set(states) == views
    # A sum alone stays a sum alone: moved by each commit's rows, never read back.
    assert with_elements() == set()
    store.close()
    assert verify(tmp_path / "history.duckdb").crawls == 3
    with Store(tmp_path / "history.duckdb").read() as con:
        assert con.execute("SELECT id, status FROM instance_versions "
                           "WHERE until_crawl IS NULL ORDER BY id").fetchall() == [
            ("i-1", "running"), ("i-2", "stopped")]


def test_a_large_fleets_sum_moves_by_the_rows_a_commit_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Of a fleet too large to remember a Store keeps each view's sum alone, and each
    later commit moves it by the versions that commit opened and closed; the whole sum
    is kept in the database too, so another writer (or the next ``crawl`` process)
    moves it as well: a view is read back in full only on its first commit. The chain
    is byte for byte a remembering Store's."""
    full: list[tuple[str, str]] = []
    real = sealing._full

    def counted(commit: Any, account: str, view: str, crawl_id: int, *, keep: int) -> Any:
        full.append((account, view))
        return real(commit, account, view, crawl_id, keep=keep)

    monkeypatch.setattr(sealing, "_full", counted)
    path = tmp_path / "sums.duckdb"
    ids = build_history(path, remember_rows=0)
    # build_history: a first Store (acme's 5 crawls, beta's instances once), then
    # another writer (acme's 2 crawls), which finds the sums the first one kept.
    acme = [("acme", v) for v in ("instance_versions", "bucket_versions", "bucket_sizes")]
    assert sorted(full) == sorted([*acme, ("beta", "instance_versions")])
    monkeypatch.setattr(sealing, "_full", real)
    reference = tmp_path / "remembering.duckdb"
    build_history(reference)
    chains = []
    for each in (path, reference):
        with Store(each).read() as con:
            chains.append(con.execute("SELECT seq, body FROM manifests ORDER BY seq"
                                      ).fetchall())
    assert chains[0] == chains[1]
    assert verify(path).crawls == len(ids)


def test_a_kept_sum_that_is_not_the_sealed_one_is_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large view's sum kept in ``meta`` that is not the one its crawl's manifest sealed
    (edited by hand, or a bug) is not built on: a warning, the state read back in full,
    and the chain stays verifiable."""
    path = tmp_path / "history.duckdb"
    store = Store(path, lock_timeout=5.0, remember_rows=0)
    store.migrate()
    crawl(store, T0, instances=[inst("i-1"), inst("i-2")])
    store.close()
    tamper(path, "UPDATE meta SET value = replace(value, ', 2, ', ', 3, ') "
                 "WHERE key LIKE 'state_sum:%'")
    read_back: list[str] = []
    real = sealing._full

    def counted(commit: Any, account: str, view: str, crawl_id: int, *, keep: int) -> Any:
        read_back.append(view)
        return real(commit, account, view, crawl_id, keep=keep)

    monkeypatch.setattr(sealing, "_full", counted)
    other = Store(path, lock_timeout=5.0, remember_rows=0)
    with capture_logs() as logs:
        crawl(other, T0 + HOUR, instances=[inst("i-1"), inst("i-3")])
    other.close()
    assert [e["event"] for e in logs] == ["store.state_sum_mismatch"]
    assert read_back == ["instance_versions"]
    assert verify(path).crawls == 2


def test_a_store_remembers_up_to_its_total_across_accounts(tmp_path: Path) -> None:
    """Across accounts a Store remembers at most ``remember_total`` records (snapshots and
    their views' elements), first come first served: an account that does not fit is
    committed set-based and keeps its views' sums alone, one that grew past what is left
    is forgotten but for its sums, and the chain is byte for byte that of a Store
    remembering everything."""

    def with_elements() -> set[tuple[str, str]]:
        return {key for key, state in states.items() if state.elements is not None}

    chains = []
    for total in (REMEMBER_ROWS, 3):
        path = tmp_path / f"total-{total}.duckdb"
        store = Store(path, lock_timeout=5.0, remember_total=total)
        store.migrate()
        # What the Store remembers (private on purpose: memory, not behaviour).
        snapshots, states = store._snapshots, store._states
        crawl(store, T0, instances=[inst("i-1"), inst("i-2")], buckets=[bucket("b-1")])
        crawl(store, T0 + HOUR / 2, instances=[inst("i-9")], account="beta")
        if total == 3:  # acme's three records fill it: beta is not remembered
            assert set(snapshots) == {("acme", "instances"), ("acme", "buckets")}
            assert ("beta", "instance_versions") not in with_elements()
            assert states[("beta", "instance_versions")].total.rows == 1
        crawl(store, T0 + HOUR, instances=[inst("i-1", status="stopped"), inst("i-3"),
                                          inst("i-4")])
        if total == 3:  # acme's instances grew past what is left: forgotten
            assert set(snapshots) == {("acme", "buckets")}
            assert with_elements() == {("acme", "bucket_versions"), ("acme", "bucket_sizes")}
        crawl(store, T0 + 2 * HOUR, instances=[inst("i-9", status="stopped")],
              account="beta")
        if total == 3:  # now beta fits
            assert set(snapshots) == {("acme", "buckets"), ("beta", "instances")}
            assert ("beta", "instance_versions") in states  # its sum, moved
        crawl(store, T0 + 3 * HOUR, instances=[inst("i-1"), inst("i-3")])
        store.close()
        assert verify(path).crawls == 5
        with Store(path).read() as con:
            chains.append(con.execute("SELECT seq, body FROM manifests ORDER BY seq"
                                      ).fetchall())
            assert con.execute("SELECT account, id, status FROM instance_versions "
                               "WHERE until_crawl IS NULL ORDER BY ALL").fetchall() == [
                ("acme", "i-1", "running"), ("acme", "i-3", "running"),
                ("beta", "i-9", "stopped")]
    assert chains[0] == chains[1]


def test_a_fleet_too_large_to_remember_keeps_its_sums_within_the_total(
        tmp_path: Path) -> None:
    """The total budget forgets only what does not fit: a fleet past ``remember_rows``
    keeps its views' sums alone (no elements) as before, beside the accounts that fit."""
    store = Store(tmp_path / "history.duckdb", lock_timeout=5.0, remember_rows=2,
                  remember_total=2)
    store.migrate()
    crawl(store, T0, instances=[inst("i-1"), inst("i-2"), inst("i-3")])
    crawl(store, T0 + HOUR, instances=[inst("i-9")], account="beta")
    assert set(store._snapshots) == {("beta", "instances")}
    assert store._states[("acme", "instance_versions")].elements is None
    assert store._states[("beta", "instance_versions")].elements is not None
    store.close()
    assert verify(tmp_path / "history.duckdb").crawls == 2


def test_one_kind_remembered_alone_may_pass_the_total(tmp_path: Path) -> None:
    """A kind the Store would remember alone is remembered past the total (up to
    ``remember_rows``): a Store of one account keeps what it kept before the total."""
    store = Store(tmp_path / "history.duckdb", lock_timeout=5.0, remember_total=1)
    store.migrate()
    crawl(store, T0, instances=[inst("i-1"), inst("i-2")])
    crawl(store, T0 + HOUR, instances=[inst("i-9")], account="beta")
    assert set(store._snapshots) == {("acme", "instances")}
    assert store._states[("acme", "instance_versions")].elements is not None
    assert store._states[("beta", "instance_versions")].elements is None  # its sum alone
    store.close()


def test_state_sum_is_the_documented_encoding(history: tuple[Path, dict[str, int]]) -> None:
    """A manifest's state sum is recomputable from the README's recipe alone."""
    path, ids = history
    with Store(path).read() as con:
        body = json.loads(con.execute("SELECT body FROM manifests WHERE crawl_id = $c",
                                      {"c": ids["changed"]}).fetchone()[0])
        rows = con.execute(
            "SELECT id, name, status, region, cpu, memory_gb, plan, tags, created_at, extra "
            "FROM instance_versions WHERE account = 'acme' AND first_crawl <= $c "
            "AND coalesce(until_crawl > $c, true)", {"c": ids["changed"]}).fetchall()
    total = 0
    for row in rows:
        line = json.dumps(["acme", *row], separators=(",", ":"), ensure_ascii=False)
        assert line == row_line("acme", "instance_versions", row)
        seed = hashlib.sha256(line.encode()).digest()
        total += int.from_bytes(hashlib.shake_256(seed).digest(256), "big")
    expected = hashlib.sha256((total % 2**2048).to_bytes(256, "big")).hexdigest()
    assert body["state"]["instance_versions"] == {"rows": 3, "sum": expected}
    summed = StateSum()
    for row in rows:
        summed.add(element("acme", "instance_versions", row))
    assert summed.as_json()["sum"] == expected


#: (name, SQL with {crawl ids}, the crawl verify must name)
TAMPERING = [
    ("edit instance_log", "UPDATE instance_log SET status = 'running' "
     "WHERE id = 'i-1' AND first_crawl = {changed}", "changed"),
    ("delete instance_log", "DELETE FROM instance_log WHERE id = 'i-4'", "changed"),
    ("insert instance_log", "INSERT INTO instance_log (account, id, name, status, region, cpu, "
     "memory_gb, plan, tags, created_at, extra, first_crawl, until_crawl, removed) VALUES "
     "('acme', 'i-x', 'x', 'running', 'eu-1', 2, 2.0, 'micro', '{{}}', NULL, '{{}}', "
     "{buckets}, NULL, false)", "buckets"),
    ("reopen a closed version", "UPDATE instance_log SET until_crawl = NULL "
     "WHERE id = 'i-2' AND removed IS NOT TRUE", "changed"),
    ("edit bucket_log", "UPDATE bucket_log SET access = 'private' WHERE id = 'b-2' "
     "AND first_crawl = {first}", "first"),
    ("delete bucket_log", "DELETE FROM bucket_log WHERE id = 'b-3'", "other"),
    ("insert bucket_log", "INSERT INTO bucket_log (account, id, region, access, created_at, "
     "tags, extra, first_crawl, until_crawl, removed) VALUES ('acme', 'b-x', 'eu-1', "
     "'public-read', NULL, '{{}}', '{{}}', {other}, NULL, false)", "other"),
    ("edit bucket_size_log", "UPDATE bucket_size_log SET size_bytes = 1 "
     "WHERE id = 'b-1' AND first_crawl = {changed}", "changed"),
    ("delete bucket_size_log", "DELETE FROM bucket_size_log WHERE id = 'b-1' "
     "AND first_crawl = {buckets}", "buckets"),
    ("insert bucket_size_log", "INSERT INTO bucket_size_log (account, id, size_bytes, "
     "first_crawl, until_crawl, removed) VALUES ('acme', 'b-2', 5, {buckets}, NULL, false)",
     "buckets"),
    ("edit crawls", "UPDATE crawls SET requests = requests + 1 WHERE crawl_id = {failed}",
     "failed"),
    ("edit crawl status", "UPDATE crawls SET status = 'succeeded', error = NULL "
     "WHERE crawl_id = {failed}", "failed"),
    ("delete crawls", "DELETE FROM crawls WHERE crawl_id = {beta}", "beta"),
    ("insert crawls", "INSERT INTO crawls (crawl_id, account, kinds, started_at, finished_at, "
     "status, instances, buckets, requests, retries) VALUES (100, 'acme', ['instances'], "
     "'2026-03-01 09:00Z', '2026-03-01 09:01Z', 'succeeded', 0, 0, 1, 0)", None),
    ("delete a manifest", "UPDATE crawls SET manifest = NULL WHERE crawl_id = {buckets}",
     "buckets"),
    ("reorder the chain", "UPDATE crawls SET manifest_seq = CASE manifest_seq WHEN 2 THEN 3 "
     "ELSE 2 END WHERE manifest_seq IN (2, 3)", "beta"),
    ("edit a manifest", "UPDATE crawls SET manifest = replace(manifest, '\"requests\":3', "
     "'\"requests\":4') WHERE crawl_id = {other}", "other"),
]


@pytest.mark.parametrize(("sql", "named"), [(t[1], t[2]) for t in TAMPERING],
                         ids=[t[0] for t in TAMPERING])
def test_tampering_names_the_crawl(history: tuple[Path, dict[str, int]], sql: str,
                                   named: str | None) -> None:
    """An edited, deleted or inserted row in any log table, in crawls or in the chain
    makes verify fail naming the first crawl whose history no longer matches."""
    path, ids = history
    tamper(path, sql.format(**ids))
    with pytest.raises(ChainBrokenError) as caught:
        verify(path)
    expected = 100 if named is None else ids[named]
    assert caught.value.crawl_id == expected, str(caught.value)
    assert f"at crawl {expected}:" in str(caught.value)


def test_a_cut_tail_shows_against_a_cited_head(history: tuple[Path, dict[str, int]]) -> None:
    """Removing the latest crawls leaves a shorter chain that verifies on its own; the head a
    report cited earlier (``--expect-head``) is then missing, and verify fails."""
    path, ids = history
    head = verify(path).head
    assert head is not None
    assert verify(path, expect_head=head).crawls == len(ids)
    tamper(path, "; ".join(f"DELETE FROM {table} WHERE first_crawl = {ids['last']}"
                           for table in ("instance_log", "bucket_log", "bucket_size_log"))
           + f"; DELETE FROM crawls WHERE crawl_id = {ids['last']}")
    assert verify(path).head != head
    with pytest.raises(ChainBrokenError, match="holds no manifest"):
        verify(path, expect_head=head)


def test_a_fresh_attach_links_to_the_latest_manifest(tmp_path: Path) -> None:
    """A commit after the file was let go (the head learned with the crawls' tail, no
    query of its own) links to the latest manifest; when the latest crawl lost its
    manifest, to the latest crawl that still holds one, as the chain's head query says."""
    path = tmp_path / "history.duckdb"
    store = Store(path, lock_timeout=5.0)
    store.migrate()
    first = crawl(store, T0, instances=[inst("i-1")])
    store.close()
    second = crawl(store, T0 + HOUR, instances=[inst("i-1", status="stopped")])
    store.close()
    assert verify(path).crawls == 2
    tamper(path, f"UPDATE crawls SET manifest = NULL WHERE crawl_id = {second}")
    third = crawl(store, T0 + 2 * HOUR, instances=[inst("i-1")])
    store.close()
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute("SELECT crawl_id, manifest_seq, manifest_hash, manifest "
                           "FROM crawls ORDER BY crawl_id").fetchall()
    finally:
        con.close()
    sealed = {row[0]: (row[1], row[2], json.loads(row[3]) if row[3] else None)
              for row in rows}
    assert sealed[second][2] is None
    assert sealed[second][0] == 2  # its seq and hash stay: not a manifest without the body
    assert (sealed[third][2]["prev"], sealed[third][2]["prev_crawl"], sealed[third][0]) == (
        sealed[first][1], first, 2)


def test_scope_limits_the_state_checks(history: tuple[Path, dict[str, int]]) -> None:
    """--account and --since check only the crawls they name (the links always whole)."""
    path, ids = history
    assert verify(path, account="beta").crawls == 1
    assert verify(path, since=T0 + 3 * HOUR).crawls == 3
    tamper(path, "UPDATE instance_log SET name = 'evil' WHERE id = 'i-9'")
    assert verify(path, account="acme").crawls == len(ids) - 1
    with pytest.raises(ChainBrokenError):
        verify(path, account="beta")


def test_genesis_seals_history_from_before_the_chain(tmp_path: Path) -> None:
    """A database migrated into the chain gets a genesis over what it held; the crawls after
    chain onto it, and an edit of the older history names the genesis."""
    path = tmp_path / "history.duckdb"
    build_history(path)
    # What schema 4 looked like: the same tables without the chain.
    tamper(path, "DROP VIEW manifests; ALTER TABLE crawls DROP COLUMN manifest; "
                 "ALTER TABLE crawls DROP COLUMN manifest_seq; "
                 "ALTER TABLE crawls DROP COLUMN manifest_hash; "
                 "UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    store = Store(path)
    store.migrate()
    last = crawl(store, T0 + 9 * HOUR, instances=[inst("i-1")], buckets=[bucket("b-1")])
    store.close()
    result = verify(path)
    assert result.genesis
    assert result.crawls == 1
    with Store(path).read() as con:
        genesis = json.loads(con.execute("SELECT body FROM manifests WHERE seq = 0"
                                         ).fetchone()[0])
        assert genesis["genesis"]["through_crawl"] == last - 1
        assert genesis["genesis"]["crawls"]["rows"] == last - 1
    tamper(path, "UPDATE instance_log SET name = 'evil' WHERE id = 'i-9'")
    with pytest.raises(ChainBrokenError, match="at the genesis") as caught:
        verify(path)
    assert caught.value.crawl_id is None


def test_verify_command(history: tuple[Path, dict[str, int]], monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    """``nexus-audit verify`` prints the count and head (exit 0), or one line naming the
    crawl (exit 1); an unknown account or a malformed ``--expect-head`` is a usage error
    (exit 2), never reported as tampering."""
    path, ids = history
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(path))
    assert main(["verify"]) == 0
    out = capsys.readouterr().out
    head = verify(path).head
    assert out == f"{len(ids)} crawls verified, chain head {head}\n"
    assert main(["verify", "--account", "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err
    # The head a report cited, pasted as a tool showed it: the same head.
    assert main(["verify", "--expect-head", f" {str(head).upper()}\n"]) == 0
    capsys.readouterr()
    # A typo in the cited head is the user's mistake, not evidence of tampering.
    for typo in (str(head)[:-1], str(head) + "0", "sha256:" + str(head), "zz"):
        with pytest.raises(SystemExit) as exited:
            main(["verify", "--expect-head", typo])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "64 hexadecimal digits" in err
        assert "rewritten" not in err
    tamper(path, f"DELETE FROM instance_log WHERE first_crawl = {ids['beta']}")
    assert main(["verify", "--since", "2026-03-01T00:00:00Z"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"crawl {ids['beta']}" in err
    assert "Traceback" not in err


def test_a_parquet_export_verifies_against_the_chain(
        history: tuple[Path, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An export carries the manifests: its window's crawls verify from the exported rows
    alone, with the database's chain head; an edited exported row fails."""
    path, _ids = history
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(path))
    window = ["--since", "2026-03-01T02:00:00Z", "--until", "2026-03-02T00:00:00Z"]
    assert main(["export", *window, "--to", str(tmp_path / "exp")]) == 0
    capsys.readouterr()
    assert main(["verify", "--export", str(tmp_path / "exp"), "--since", window[1]]) == 0
    assert capsys.readouterr().out == f"4 crawls verified, chain head {verify(path).head}\n"
    assert main(["verify", "--export", str(tmp_path / "exp")]) == 2
    capsys.readouterr()
    part = next((tmp_path / "exp" / "bucket_sizes").glob("*/*/*.parquet"))
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * REPLACE (size_bytes + 1 AS size_bytes) FROM '{part}') "
                f"TO '{part}.new' (FORMAT parquet)")
    con.close()
    Path(f"{part}.new").replace(part)
    assert main(["verify", "--export", str(tmp_path / "exp"), "--since", window[1]]) == 1
    assert "crawl" in capsys.readouterr().err


def test_clock_corrections_stay_verifiable(tmp_path: Path) -> None:
    """A crawl that re-dates earlier ones (the clock stepped back) lists the corrections in
    its manifest; verify takes the committed times back from clock_skews, and an edited,
    removed or inserted correction names the crawl that made it."""
    path = tmp_path / "history.duckdb"
    store = Store(path, lock_timeout=5.0)
    store.migrate()
    crawl(store, T0, instances=[inst("i-1")])
    crawl(store, T0 + HOUR, instances=[inst("i-1")], buckets=[bucket("b-1")])
    stepped = crawl(store, T0 + HOUR / 2, instances=[inst("i-1"), inst("i-2")])
    store.close()
    with Store(path).read() as con:
        skews = con.execute("SELECT crawl_id FROM clock_skews").fetchall()
        body = json.loads(con.execute("SELECT body FROM manifests WHERE crawl_id = $c",
                                      {"c": stepped}).fetchone()[0])
    assert skews
    assert [c["crawl_id"] for c in body["corrections"]] == sorted(r[0] for r in skews)
    assert verify(path).crawls == 3
    redated = skews[0][0]
    # The first crawl that no longer matches: the re-dated one (its committed times can no
    # longer be restored) or the one a forged correction names.
    for sql, named in (("UPDATE clock_skews SET recorded_finished_at = recorded_finished_at "
                        "+ INTERVAL 1 SECOND", redated),
                       ("DELETE FROM clock_skews", redated),
                       ("INSERT INTO clock_skews SELECT * REPLACE (1 AS crawl_id) "
                        "FROM clock_skews", 1),
                       ("UPDATE clock_skews SET detected_at = detected_at", None)):
        copy = tmp_path / "copy.duckdb"
        copy.write_bytes(path.read_bytes())
        tamper(copy, sql)
        if named is None:  # touches nothing the chain vouches for
            verify(copy)
            continue
        with pytest.raises(ChainBrokenError) as caught:
            verify(copy)
        assert caught.value.crawl_id == named, str(caught.value)


_FLEET = st.lists(st.tuples(st.sampled_from(["i-1", "i-2", "i-3", "i-4", "i-5"]),
                            st.sampled_from(["running", "stopped"])),
                  max_size=5, unique_by=lambda pair: pair[0])
_BUCKETS = st.lists(st.tuples(st.sampled_from(["b-1", "b-2", "b-3"]),
                              st.integers(1, 3), st.sampled_from(["private", "public-read"])),
                    max_size=3, unique_by=lambda triple: triple[0])
#: One step: a crawl of instances, buckets or both (None: not crawled), failed or not,
#: by this Store or by another writer.
_STEP = st.tuples(st.none() | _FLEET, st.none() | _BUCKETS, st.booleans(), st.booleans())


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP.filter(lambda s: s[0] is not None or s[1] is not None),
                      min_size=1, max_size=6),
       remember=st.sampled_from([0, 2]))
def test_any_sequence_of_commits_seals_what_a_full_read_back_seals(
        tmp_path_factory: pytest.TempPathFactory,
        steps: list[tuple[Any, Any, bool, bool]], remember: int) -> None:
    """Whatever a Store remembers (nothing, or fleets of up to two), any sequence of
    crawls (fleets growing past it and shrinking, removals, failures, another writer in
    between) seals the same chain as a Store reading every state back, and verifies."""
    base = tmp_path_factory.mktemp("sequences")
    chains = []
    for keep in (remember, REMEMBER_ROWS):
        path = base / f"keep-{keep}.duckdb"
        ours = Store(path, lock_timeout=5.0, remember_rows=keep)
        ours.migrate()
        other = Store(path, lock_timeout=5.0, remember_rows=keep)
        for n, (fleet, buckets, failed, by_other) in enumerate(steps):
            store = other if by_other else ours
            crawl(store, T0 + n * HOUR,
                  instances=None if fleet is None else [inst(i, status=s) for i, s in fleet],
                  buckets=None if buckets is None else [
                      bucket(b, size=size * 10**9, access=access)
                      for b, size, access in buckets],
                  failed=failed)
            store.close()
        with ours.read() as con:
            chains.append(con.execute("SELECT seq, body FROM manifests ORDER BY seq"
                                      ).fetchall())
            assert verify_history(con).crawls == len(steps)
    assert chains[0] == chains[1]
