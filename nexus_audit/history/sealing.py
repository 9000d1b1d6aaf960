"""Sealing a commit into the evidence chain: the crawl's manifest, written in the commit's
own transaction (see :mod:`nexus_audit.history.chain` for the encoding).

A successful crawl's state sums are updated from the rows the commit appends when the
Store still remembers the previous sums (:class:`~nexus_audit.history.chain.ViewState`):
a few hashes per changed record, nothing per unchanged one. Otherwise (a Store's first
commit of an account, another writer in between, a set-based commit) they are computed
from the account's current rows, read back inside the transaction in batches of
:data:`~nexus_audit.history.elements.FETCH_ROWS` (never the whole fleet as Python objects
at once: a million instances fetched in one piece took 600 MB of tuples), each row's
element built by DuckDB where it writes the row's line exactly as Python does
(:mod:`nexus_audit.history.elements`).

Updating a sum takes away the elements of the rows a change replaces, which the Store
keeps by id: only for views of up to :data:`~nexus_audit.history.staging.REMEMBER_ROWS`
rows (about 170 bytes a row), as it keeps snapshots only of such fleets. Of a larger
fleet it keeps the sum alone, and the next commit moves it by the rows that commit
opened and closed, read back from the view (:data:`MOVED`): the versions a crawl changed,
not the fleet (a million instances read back and hashed took 7 to 10 s a commit).
"""

# S608: only our own identifiers (column names, generated aliases) are formatted into SQL;
# every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from operator import itemgetter
from typing import Any, Final

import duckdb

from nexus_audit.domain.model import Kind
from nexus_audit.history import duckfile
from nexus_audit.history.chain import (
    CRAWL_COLUMNS,
    KIND_VIEWS,
    LOG_COLUMNS,
    SKEW_COLUMNS,
    VIEW_COLUMNS,
    StateSum,
    ViewState,
    correction,
    crawl_row,
    genesis,
    manifest,
    row_line,
)
from nexus_audit.history.elements import Batch, fold_elements
from nexus_audit.history.plain import optimized
from nexus_audit.history.schema import BUCKET_COLUMNS, INSTANCE_COLUMNS, Record
from nexus_audit.history.staging import REMEMBER_ROWS
from nexus_audit.logs import get_logger

#: The memo key of the chain's head (seq, hash) while this process holds the file.
HEAD: Final = "chain_head"
#: Per view, the positions of its columns in a staged record of its kind.
_POSITIONS: Final[Mapping[str, tuple[int, ...]]] = {
    "instance_versions": tuple(INSTANCE_COLUMNS.index(c) for c in VIEW_COLUMNS[
        "instance_versions"]),
    "bucket_versions": tuple(BUCKET_COLUMNS.index(c) for c in VIEW_COLUMNS["bucket_versions"]),
    "bucket_sizes": tuple(BUCKET_COLUMNS.index(c) for c in VIEW_COLUMNS["bucket_sizes"]),
}
#: Per view, a staged record's columns in the order of its line (a tuple).
_COLUMNS: Final[Mapping[str, Callable[[Record], tuple[Any, ...]]]] = {
    view: itemgetter(*positions) for view, positions in _POSITIONS.items()}
#: The chain's head: the latest crawl's manifest, else the genesis.
_HEAD_SQL: Final = """
    SELECT * FROM (SELECT manifest_seq, manifest_hash, crawl_id FROM @h@.crawls
                   WHERE manifest IS NOT NULL ORDER BY crawl_id DESC LIMIT 1)
    UNION ALL
    SELECT 0, sha256(value), NULL FROM @h@.meta WHERE key = 'chain_genesis'
    ORDER BY 1 DESC LIMIT 1"""
#: A view's current rows of one account, as the line lists them (and a flag: each is one).
CURRENT: Final = {view: f"SELECT {', '.join(cols)}, true FROM @h@.{view} "
                        "WHERE account = $a AND until_crawl IS NULL"
                  for view, cols in VIEW_COLUMNS.items()}

#: A view's rows of one account that a commit opened (last column true) or closed.
MOVED: Final = {view: f"SELECT {', '.join(cols)}, until_crawl IS NULL FROM @h@.{view} "
                      "WHERE account = $a AND (first_crawl = $c OR until_crawl = $c)"
                for view, cols in VIEW_COLUMNS.items()}

#: A large view's whole state sum after a commit, for the next process's commit: kept in
#: ``meta`` under a key of its account and view, used only when it is the sum the
#: following crawl's manifest sealed (its SHA-256 in that manifest), so nothing has to be
#: trusted (:func:`_stored`).
_SUM_KEY: Final = "state_sum:"
_SAVE_SUM: Final = "INSERT OR REPLACE INTO @h@.meta VALUES ($k, $v)"
_LOAD_SUM: Final = """SELECT m.value, c.manifest FROM @h@.meta m, @h@.crawls c
                      WHERE m.key = $k AND c.crawl_id = $c"""

#: INSERT_CRAWL's parameter of each crawl column where the names differ.
_PARAMS: Final = {"crawl_id": "c", "requests_by_endpoint": "rbe"}
#: Per version view, what a diff commit appends: the records that became versions and the
#: ids marked removed.
Plan = Mapping[str, tuple[Sequence[Record], Sequence[str]]]


@dataclass(slots=True)
class Sealed:
    """A crawl's manifest (to be inserted with its row), and what the Store remembers once
    the commit is through."""

    seq: int
    hash: str
    text: str
    crawl_id: int
    #: Per (account, view): the state after the commit.
    states: dict[tuple[str, str], ViewState] = field(default_factory=dict)
    #: Per (account, view), for states updated in place: id -> new element (None: gone).
    changes: dict[tuple[str, str], dict[str, bytes | None]] = field(default_factory=dict)
    #: The most elements a remembered state holds (:data:`REMEMBER_ROWS`).
    keep: int = REMEMBER_ROWS

    def params(self) -> dict[str, Any]:
        """The manifest's columns, as :data:`~nexus_audit.history.writes.INSERT_CRAWL`'s
        parameters."""
        return {"manifest_seq": self.seq, "manifest_hash": self.hash, "manifest": self.text}

    def remember(self, memo: dict[tuple[str, str], ViewState]) -> None:
        """Apply the commit's states to the Store's memory (after the transaction)."""
        for key, state in self.states.items():
            elements = state.elements
            if elements is not None:
                for ident, new in self.changes.get(key, {}).items():
                    if new is None:
                        elements.pop(ident, None)
                    else:
                        elements[ident] = new
                if len(elements) > self.keep:  # grown past what is remembered: the sum
                    state = ViewState(state.crawl_id, None, state.total)
            memo[key] = state


def head(commit: duckfile.Commit) -> tuple[int, str | None, int | None]:
    """The chain's last (seq, hash, crawl id); (0, None, None) before the first manifest."""
    known: tuple[int, str | None, int | None] | None = commit.memo.get(HEAD)
    if known is None:
        optimized(commit.cursor, commit.memo)
        row = commit.cursor.execute(_HEAD_SQL.replace("@h@", commit.alias)).fetchone()
        known = ((int(row[0]), str(row[1]), None if row[2] is None else int(row[2]))
                 if row else (0, None, None))
        commit.memo[HEAD] = known
    return known


def _full(commit: duckfile.Commit, account: str, view: str, crawl_id: int, *,
          keep: int) -> ViewState:
    """The view's state read back from the database (inside the commit's transaction), in
    batches; the elements by id too while there are at most ``keep`` rows (else None)."""
    optimized(commit.cursor, commit.memo)
    return fold_elements(commit.cursor, CURRENT[view].replace("@h@", commit.alias),
                         {"a": account}, account, view,
                         lambda batches: _summed(batches, crawl_id, keep=keep))


def _summed(batches: Iterator[Batch], crawl_id: int, *, keep: int) -> ViewState:
    """The state of the rows ``batches`` hold: their sum, and their elements by id while
    there are at most ``keep`` rows (else None)."""
    elements: dict[str, bytes] | None = {}
    total = StateSum()
    for ids, digests, _ in batches:
        total.add_all(digests)
        if elements is not None:
            elements.update(zip(ids, digests, strict=True))
            # More rows than remembered, or an id on two rows (never written so): the
            # elements could not follow the sum; none are kept.
            if len(elements) > keep or len(elements) != total.rows:
                elements = None
    return ViewState(crawl_id, elements, total)


def _sum_key(account: str, view: str) -> str:
    return _SUM_KEY + json.dumps([account, view])


def _save_sum(commit: duckfile.Commit, account: str, view: str, state: ViewState) -> None:
    """Keep ``state``'s whole sum in ``meta`` (inside the commit's transaction)."""
    value = json.dumps([state.crawl_id, state.total.rows, format(state.total.total, "x")])
    commit.cursor.execute(_SAVE_SUM.replace("@h@", commit.alias),
                          {"k": _sum_key(account, view), "v": value})


def _stored(commit: duckfile.Commit, account: str, view: str,
            crawl_id: int | None) -> ViewState | None:
    """The view's state (its sum alone) as of ``crawl_id`` (the account's last successful
    crawl of the view's kind), from ``meta``, if that is what the crawl's manifest sealed;
    else None (none kept, an older crawl's, or not the sealed sum: then read back)."""
    if crawl_id is None:
        return None
    optimized(commit.cursor, commit.memo)
    row = commit.cursor.execute(_LOAD_SUM.replace("@h@", commit.alias),
                                {"k": _sum_key(account, view), "c": crawl_id}).fetchone()
    if row is None or row[1] is None:
        return None
    try:
        kept_crawl, rows, total = json.loads(row[0])
        state = StateSum(int(rows), int(total, 16))
        sealed = json.loads(row[1])["state"][view]
    except (ValueError, TypeError, KeyError):
        return None
    if kept_crawl != crawl_id:
        return None
    if state.as_json() != sealed:
        get_logger(__name__).warning(
            "store.state_sum_mismatch", account=account, view=view, crawl_id=crawl_id,
            hint="the sum kept in meta is not the one sealed; reading the state back")
        return None
    return ViewState(crawl_id, None, state)


def _moved(commit: duckfile.Commit, account: str, view: str, old: ViewState,
           crawl_id: int) -> ViewState:
    """The view's state after the commit from the state before it (its sum alone is
    used) and the rows the commit opened (added) and closed (taken away), read back
    inside the commit's transaction in batches."""
    optimized(commit.cursor, commit.memo)
    return fold_elements(commit.cursor, MOVED[view].replace("@h@", commit.alias),
                         {"a": account, "c": crawl_id}, account, view,
                         lambda batches: _shifted(batches, old, crawl_id))


def _shifted(batches: Iterator[Batch], old: ViewState, crawl_id: int) -> ViewState:
    """``old``'s sum with the rows ``batches`` flag as opened added and the others
    taken away."""
    total = old.total.copy()
    for _, digests, opened in batches:
        total.add_all([digest for digest, new in zip(digests, opened, strict=True) if new])
        for digest, new in zip(digests, opened, strict=True):
            if not new:
                total.remove(digest)
    return ViewState(crawl_id, None, total)


def _incremental(account: str, view: str, old: ViewState, crawl_id: int,
                 records: Sequence[Record], removed: Sequence[str],
                 ) -> tuple[ViewState, dict[str, bytes | None]] | None:
    """The state after appending ``records`` and removal markers for ``removed``, from the
    previous state; None when they do not fit it (then the state is read back in full)."""
    elements = old.elements
    if elements is None:
        return None
    changes: dict[str, bytes | None] = {}
    added: list[bytes] = []  # the new rows' elements
    taken: list[bytes] = []  # the elements of the rows they replace or remove
    columns = _COLUMNS[view]
    for record in records:
        values = columns(record)
        ident = str(values[0])
        if ident in changes:
            return None  # an id twice: not a diff this state can follow
        before = elements.get(ident)
        if before is not None:
            taken.append(before)
        new = sha256(row_line(account, view, values).encode("utf-8")).digest()  # element()
        added.append(new)
        changes[ident] = new
    for ident in removed:
        before = elements.get(ident)
        if before is None or ident in changes:
            return None
        taken.append(before)
        changes[ident] = None
    return ViewState(crawl_id, elements, old.total.moved(added, taken)), changes


def seal(commit: duckfile.Commit, values: Mapping[str, Any], *, account: str,
         kinds: Sequence[Kind], succeeded: bool, plans: Mapping[Kind, Plan | None],
         previous: Mapping[Kind, int | None],
         memory: Mapping[tuple[str, str], ViewState],
         corrections: Sequence[Any] = (), keep: int = REMEMBER_ROWS,
         before_full: Callable[[str], None] | None = None) -> Sealed:
    """The manifest of a crawl (``values``: :data:`INSERT_CRAWL`'s parameters).

    ``plans``: per kind, what a diff commit appended (None: set-based); ``previous``: per
    kind, the account's successful crawl the commit followed; ``memory``: the Store's
    states; ``corrections``: the clock corrections (``ClockSkew``) the commit made;
    ``keep``: the most rows of a view whose elements are remembered; ``before_full``:
    called with a view's name before it is read back in full (the Store compacts its
    log then). Call inside the commit's transaction, after the crawl's history is written
    (a set-based commit's state is read back).
    """
    crawl_id = int(values["c"])
    seq, prev, prev_crawl = head(commit)
    seq += 1
    sealed = Sealed(seq, "", "", crawl_id, keep=keep)
    state: dict[str, StateSum] | None = None
    if succeeded:
        state = {}
        for kind in kinds:
            plan = plans.get(kind)
            for view in KIND_VIEWS[kind]:
                key = (account, view)
                old = memory.get(key)
                # The state this Store left is the one this commit follows (no other
                # writer's crawl of the kind in between); else a large view's sum, kept
                # by whoever committed that crawl.
                fresh = old is not None and old.crawl_id == previous.get(kind)
                if not fresh:
                    old = _stored(commit, account, view, previous.get(kind))
                    fresh = old is not None
                found = None
                if plan is not None and old is not None and fresh:
                    records, removed = plan.get(view, ((), ()))
                    found = _incremental(account, view, old, crawl_id, records, removed)
                if found is not None:
                    new, sealed.changes[key] = found
                else:
                    moved = (_moved(commit, account, view, old, crawl_id)
                             if old is not None and fresh and old.elements is None else None)
                    # A sum alone stays a sum alone (a large fleet, or one past the
                    # Store's budget): elements come back only with a full read.
                    if moved is None and before_full is not None:
                        before_full(view)
                    new = (moved if moved is not None
                           else _full(commit, account, view, crawl_id, keep=keep))
                if new.elements is None:
                    _save_sum(commit, account, view, new)
                sealed.states[key] = new
                state[view] = new.total
    columns = {c: values[_PARAMS.get(c, c)] for c in CRAWL_COLUMNS}
    made = sorted((correction({c: getattr(skew, c) for c in SKEW_COLUMNS})
                   for skew in corrections), key=lambda c: c["crawl_id"])
    text = manifest(seq=seq, prev=prev, prev_crawl=prev_crawl, crawl=crawl_row(columns),
                    state=state, corrections=made)
    sealed.hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    sealed.text = text
    return sealed


def write_genesis(cursor: duckdb.DuckDBPyConnection) -> None:
    """Seal the history a database already holds (the default catalog) as the chain's
    genesis, if it holds any and the chain is empty. Inside the migration's transaction."""
    has_manifests = cursor.execute("SELECT count(*) FROM manifests").fetchone()
    if has_manifests and has_manifests[0]:
        return
    last = cursor.execute("SELECT max(crawl_id) FROM crawls").fetchone()
    if not last or last[0] is None:
        return
    through = int(last[0])
    columns = ", ".join(CRAWL_COLUMNS)
    relation = cursor.execute(f"SELECT {columns} FROM crawls WHERE crawl_id <= $t",
                              {"t": through})
    crawls = [dict(zip(CRAWL_COLUMNS, row, strict=True)) for row in relation.fetchall()]
    logs = {table: cursor.execute(
                f"SELECT {', '.join(cols)} FROM {table} WHERE first_crawl <= $t",
                {"t": through}).fetchall()
            for table, cols in LOG_COLUMNS.items()}
    text = genesis(through_crawl=through, crawls=crawls, logs=logs)
    cursor.execute("INSERT INTO meta VALUES ('chain_genesis', $body)", {"body": text})


def head_from_rows(memo: dict[Any, Any], rows: Sequence[tuple[Any, ...]]) -> None:
    """Remember in a commit's ``memo`` the chain's head from the rows of
    :data:`~nexus_audit.history.writes.CRAWLS_SINCE` when the latest crawl among them (the
    latest of all) carries a manifest: what :func:`head` would query for. Otherwise (no
    rows, or the latest crawl has none) :func:`head` asks the database as before."""
    if not rows:
        return
    latest = max(rows, key=lambda row: row[1])
    seq, digest, sealed = latest[6:9]
    if sealed and seq is not None and digest is not None:
        memo[HEAD] = (int(seq), str(digest), int(latest[1]))
