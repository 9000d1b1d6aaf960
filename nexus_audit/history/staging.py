"""A crawl in progress, staged outside the database until its commit, and the
fingerprints of the current versions it is compared with (the fast path of
:mod:`nexus_audit.history.store`)."""

# S608: only our own identifiers (column names, generated aliases) are formatted into SQL;
# every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import compress
from operator import itemgetter, ne
from typing import Any, Final

import duckdb

from nexus_audit.domain.model import KINDS, Bucket, Instance, Kind
from nexus_audit.errors import StoreError
from nexus_audit.history.chain import KIND_VIEWS
from nexus_audit.history.failures import translated
from nexus_audit.history.removals import missing_ids
from nexus_audit.history.schema import (
    BUCKET_COLUMNS,
    BUCKET_VERSION_COLUMNS,
    INSTANCE_COLUMNS,
    STAGING_DDL,
    Record,
)

_record_id: Final = itemgetter(0)
_bucket_version_fields: Final = itemgetter(
    *(BUCKET_COLUMNS.index(c) for c in BUCKET_VERSION_COLUMNS))
SIZE_FIELD: Final = BUCKET_COLUMNS.index("size_bytes")


def bucket_fingerprint(record: Bucket) -> tuple[int, object]:
    """A bucket's fingerprint: its versioned fields' hash and its size (kept apart)."""
    return hash(_bucket_version_fields(record)), record.size_bytes


#: The most records of one kind (or rows of one version view) a Store remembers from a
#: commit for the next one: their fingerprints (the snapshot) and their evidence elements
#: (:mod:`nexus_audit.history.sealing`), together about 300 bytes a record. A larger
#: fleet is compared in full, set-based, in DuckDB, whose memory is bounded (spill.py):
#: remembering a million instances took 300 MB, twice that while the next crawl ran.
REMEMBER_ROWS: Final = 200_000

#: Rows DuckDB's appender buffers before they are flushed to the staging table (and
#: before any read of it: :meth:`StagedCrawl.table`). A flush per batch of 1,000 cost
#: about 1.5 µs a record more (a million staged instances: 5.9 s of CPU against 4.0 to
#: 4.6 s flushed every 3,000 to 5,000 rows); flushed every 9,000 or more, the staging
#: process's peak RSS grew by 50 to 90 MB at a million (124 MB flushed every 1,000,
#: 128 MB every 5,000, 211 MB every 17,000), though DuckDB counted no more memory.
FLUSH_ROWS: Final = 4096

#: The most records a Store remembers across all its accounts and kinds together (see
#: :func:`keep_snapshot`; one kind remembered alone may hold up to ``REMEMBER_ROWS``, so
#: a Store of one account remembers what it did before). In ``serve`` with a hundred
#: accounts of 10,000 instances, remembering every account kept ~300 MB of RSS (a
#: record's fingerprint and evidence element, ~260 bytes as Python objects, and the
#: allocator's share around them); now a tenth of them are, and each other commit of
#: 10,000 is set-based, ~0.2 s of CPU in a worker thread.
REMEMBER_TOTAL: Final = 100_000

#: Per kind, a record's fingerprint as kept in a snapshot (see :class:`Fingerprints`).
_FINGERPRINT: Final[Mapping[Kind, Callable[[Any], object]]] = {
    "instances": hash, "buckets": bucket_fingerprint}


def keep_snapshot(snapshots: dict[tuple[str, Kind], Fingerprints],
                  states: dict[tuple[str, str], Any], account: str, kind: Kind,
                  snapshot: Fingerprints | None, total: int) -> None:
    """Remember ``snapshot``, the current versions of ``account``'s ``kind`` after a
    commit, in a Store's ``snapshots``, unless it is None (a fleet too large to remember:
    its views' sums alone stay in ``states``, see :mod:`~nexus_audit.history.sealing`) or
    the records remembered of every account and kind would then be more than ``total``
    (one kind remembered alone always fits); then the Store forgets that kind's snapshot
    and its views' elements, keeping their sums: its next commit is compared in full,
    set-based, and moves the sums by the rows it changed. Who remembers is first come,
    first served: a hundred accounts crawled in turns keep the same ones remembered, and
    no commit evicts another account.
    """
    key = (account, kind)
    if snapshot is None:
        snapshots.pop(key, None)
        return
    others = sum(len(s.keys) for k, s in snapshots.items() if k != key)
    if not others or others + len(snapshot.keys) <= total:
        snapshots[key] = snapshot
        return
    snapshots.pop(key, None)
    for view in KIND_VIEWS[kind]:
        state = states.get((account, view))
        if state is not None and state.elements is not None:
            # Its sum alone (a few hundred bytes): the next commit moves it by the rows
            # that commit changes instead of reading the account's rows back.
            states[(account, view)] = dataclasses.replace(state, elements=None)


@dataclass(frozen=True, slots=True)
class Fingerprints:
    """The current versions of one account and kind as of a committed crawl: id → fingerprint.

    A fingerprint, not the record, so a 200,000-instance fleet costs tens of MB here, not
    hundreds: an instance's is ``hash(record)``, a bucket's the hash of its versioned fields
    and its size (which live in separate tables). Python's tuple hash folds each field's
    hash in through invertible steps, so a record differing in one field always gets
    another fingerprint unless that field's own hashes collide (2**-64 for strings, keyed
    per process; integers a multiple of 2**61-1 apart); several fields changing at once
    could collide with the same odds. Never shared across processes: string hashes are
    keyed per process.
    """

    crawl_id: int
    keys: dict[str, object]
    #: ``list(keys)``, when the crawl's commit listed it to find its removed ids (else
    #: None): the next crawl finds its own faster (:mod:`.removals`).
    order: list[str] | None = None


class StagedCrawl:
    """The records of one crawl in progress, staged outside the database until commit.

    Implements the crawler's ``CrawlSink``. With a snapshot of the current versions (kept
    by the Store from its last commit), each batch is compared with it in C-level loops
    (``map`` and ``compress`` over fingerprints) and only the records that differ are
    kept, in Python: an hourly crawl of a fleet that barely changes stages nothing in
    DuckDB. Without a snapshot (a Store's first crawl of an account and kind, or a fleet of
    more than ``remember`` records), or once an id repeats within the crawl, records go
    to DuckDB's Appender as they come, into a
    private in-memory database on the hub the commit runs on (``hub`` makes its cursors),
    created on first use: columnar and compressed, so far smaller than the records as
    Python objects (a million instances take about 40 MB), and spilled to a temporary
    file only while a commit bounds DuckDB's memory (see :mod:`nexus_audit.history.spill`).
    Their fingerprints are kept to become the next snapshot until there are more than
    ``remember``: then none are (the next crawl is compared in full), and whether an id
    came twice is asked of DuckDB at the commit.
    """

    def __init__(self, account: str, kinds: tuple[Kind, ...], started_at: datetime,
                 bases: Mapping[Kind, Fingerprints | None] | None = None, *,
                 hub: Callable[[], duckdb.DuckDBPyConnection],
                 remember: int = REMEMBER_ROWS) -> None:
        self.account = account
        self._hub = hub
        self.kinds = kinds
        self.started_at = started_at
        self.instance_count = 0
        self.bucket_count = 0
        self._bases: dict[Kind, Fingerprints | None] = {k: (bases or {}).get(k) for k in kinds}
        #: Against a snapshot: id → fingerprint of every record seen, in the order seen
        #: (the record seen last winning), which becomes the next snapshot as it is: kept
        #: in crawl order, so the next crawl's lookups walk it in order (a copy of the old
        #: snapshot patched with the changes drifts from that order as the fleet churns,
        #: and lookups got twice as slow over a few thousand crawls).
        self._seen: dict[Kind, dict[str, object]] = {k: {} for k in kinds}
        #: Against a snapshot: ids held or staged (the others were skipped as unchanged).
        self._staged_ids: dict[Kind, set[str]] = {k: set() for k in kinds}
        #: Records that differ from the snapshot, held in Python until the commit.
        self._held: dict[Kind, list[Record]] = {k: [] for k in kinds}
        #: Without a snapshot: id → fingerprint of the records staged in DuckDB, the
        #: record seen last winning (the next snapshot); None past ``remember`` records.
        self._keys: dict[Kind, dict[str, object] | None] = {k: {} for k in kinds}
        self._remember = remember
        #: Whether each id was staged once, as DuckDB answered it (for untracked kinds).
        self._unique: dict[Kind, bool] = {}
        #: Whether a kind's records go straight to DuckDB (no snapshot, or an id repeated).
        self._direct: dict[Kind, bool] = {k: self._bases[k] is None for k in kinds}
        self._duplicates: dict[Kind, bool] = dict.fromkeys(kinds, False)
        #: Rows appended to each DuckDB staging table.
        self._rows: dict[Kind, int] = dict.fromkeys(kinds, 0)
        #: Rows the appender buffers, not yet flushed to the table (see FLUSH_ROWS).
        self._pending: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        self._removed: dict[Kind, list[str]] = {}
        #: The ids seen, listed in order when the removed ones were looked for.
        self._order: dict[Kind, list[str]] = {}
        self.alias = "stage_" + uuid.uuid4().hex[:12]
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._appenders: dict[Kind, Any] = {}
        self._open = True

    def __repr__(self) -> str:
        return (f"StagedCrawl({self.account!r}, {self.kinds!r}, "
                f"instances={self.instance_count}, buckets={self.bucket_count})")

    @property
    def open(self) -> bool:
        """Whether records can still be added (neither committed nor discarded)."""
        return self._open

    def _require_open(self) -> None:
        if not self._open:
            raise StoreError("this staged crawl was already committed or discarded")

    def add_instances(self, batch: Sequence[Instance]) -> None:
        """Stage a batch of instances."""
        self._add("instances", batch)
        self.instance_count += len(batch)

    def add_buckets(self, batch: Sequence[Bucket]) -> None:
        """Stage a batch of buckets."""
        self._add("buckets", batch)
        self.bucket_count += len(batch)

    def _add(self, kind: Kind, batch: Sequence[Record]) -> None:
        self._require_open()
        self._removed.pop(kind, None)
        self._order.pop(kind, None)
        if kind not in self.kinds:
            raise StoreError(f"this crawl does not cover {kind}")
        if not batch:
            return
        base = self._bases[kind]
        seen = self._keys[kind] if base is None else self._seen[kind]
        if seen is None:  # more records than remembered: DuckDB alone keeps them
            self._append(kind, batch)
            return
        ids = list(map(_record_id, batch))
        fingerprints = list(map(_FINGERPRINT[kind], batch))
        # An id seen twice (pages shifting under churn) shows as a set or dict that grew
        # by less than the batch.
        before = len(seen)
        seen.update(zip(ids, fingerprints, strict=True))
        if base is None and len(seen) > self._remember:
            self._keys[kind] = None  # no snapshot of this fleet: let the dict go now
        if len(seen) - before != len(ids):
            self._duplicates[kind] = True
            if not self._direct[kind]:
                # Once an id repeats, the diff path is off (see diffable): stage everything
                # from here on, in order after what was held, so the record seen last wins.
                self._direct[kind] = True
                self._flush_held(kind)
        if self._direct[kind]:
            if base is not None:
                self._staged_ids[kind].update(ids)
            self._append(kind, batch)
            return
        assert base is not None  # not direct: compared with a snapshot
        known = list(map(base.keys.get, ids))
        if known == fingerprints:  # the usual batch: nothing changed (one C-level compare)
            return
        differs = list(map(ne, fingerprints, known))
        if any(differs):
            self._held[kind].extend(compress(batch, differs))
            self._staged_ids[kind].update(compress(ids, differs))

    def _flush_held(self, kind: Kind) -> None:
        """Stage the records held as different, in the order they came."""
        held, self._held[kind] = self._held[kind], []
        self._append(kind, held)

    def _staging_cursor(self) -> duckdb.DuckDBPyConnection:
        """The cursor on the staging database, created on first use."""
        if self._cursor is not None:
            return self._cursor
        cursor = self._hub()
        try:
            # Compressed as DuckDB compresses a file: a million staged instances take
            # 40 MB instead of 180.
            cursor.execute(f"ATTACH ':memory:' AS {self.alias} (COMPRESS)")
            cursor.execute(f"USE {self.alias}")
            for ddl in STAGING_DDL:
                cursor.execute(ddl)
            self._appenders = {kind: cursor.appender(kind) for kind in KINDS}
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("USE memory")
                cursor.execute(f"DETACH {self.alias}")
            cursor.close()
            raise StoreError(f"cannot create a staging area: {exc}") from exc
        self._cursor = cursor
        return cursor

    def _append(self, kind: Kind, batch: Sequence[Record]) -> None:
        if not batch:
            return
        self._staging_cursor()
        appender = self._appenders[kind]
        with translated(lambda exc: f"cannot stage {kind}: {exc}"):
            appender.append_rows(batch)
        self._rows[kind] += len(batch)
        self._pending[kind] += len(batch)
        if self._pending[kind] >= FLUSH_ROWS:
            self._flush(kind)

    def _flush(self, kind: Kind) -> None:
        """Hand the rows the appender buffers to the staging table (before it is read)."""
        if self._pending[kind]:
            with translated(lambda exc: f"cannot stage {kind}: {exc}"):
                self._appenders[kind].flush()
            self._pending[kind] = 0

    def table(self, kind: Kind) -> str:
        """The qualified staging table of ``kind`` (created if nothing was staged yet),
        holding every record appended so far."""
        self._staging_cursor()
        self._flush(kind)
        return f"{self.alias}.{kind}"

    def base(self, kind: Kind) -> Fingerprints | None:
        """The snapshot this crawl was diffed against, if any."""
        return self._bases.get(kind)

    def diffable(self, kind: Kind, latest_crawl: int | None) -> bool:
        """Whether only the differences were kept and the snapshot is still current."""
        base = self._bases.get(kind)
        return (base is not None and not self._direct[kind]
                and base.crawl_id == latest_crawl)

    def unique(self, kind: Kind) -> bool:
        """Whether each id was seen once (so the staged table holds each id once).

        Of a kind staged without its fingerprints (past ``remember``), DuckDB counts.
        """
        if (self._duplicates[kind] or self._keys[kind] is not None
                or self._bases[kind] is not None):
            return not self._duplicates[kind]
        found = self._unique.get(kind)
        if found is None:
            table = self.table(kind)
            assert self._cursor is not None  # table() opened it
            with translated(lambda exc: f"cannot check the staged {kind}: {exc}"):
                row = self._cursor.execute(
                    f"SELECT count(*) = count(DISTINCT id) FROM {table}").fetchone()
            found = self._unique[kind] = bool(row and row[0])
        return found

    def stage_all(self, kind: Kind, cursor: duckdb.DuckDBPyConnection, h: str) -> None:
        """Stage every record of ``kind`` for the full comparison (the snapshot was stale).

        Records held as different are appended; records skipped as unchanged are read from
        the history as the snapshot's crawl saw it (history rows are never rewritten, only
        closed), on ``cursor`` where database ``h`` is attached. Call outside a transaction.
        """
        base = self._bases.get(kind)
        if base is None:
            return
        self._flush_held(kind)
        self._direct[kind] = True
        staged = self._staged_ids[kind]
        skipped = [i for i in self._seen[kind] if i not in staged]
        if not skipped:
            return
        target = self.table(kind)
        with translated(lambda exc: f"cannot stage {kind}: {exc}"):
            found = cursor.execute(
                AS_OF[kind].replace("@h@", h).replace("@stg@", target),
                {"a": self.account, "s": base.crawl_id, "ids": skipped}).fetchone()
        count = int(found[0]) if found else 0
        self._rows[kind] += count
        staged.update(skipped)
        if count != len(skipped):
            raise StoreError(
                f"the history of {self.account} {kind} as of crawl {base.crawl_id}, which "
                "this process committed, is gone (the database was replaced?); the crawl "
                "was not recorded and the next one will be compared in full")

    def removed(self, kind: Kind) -> list[str]:
        """Ids in the snapshot that this crawl did not see (kept once asked: the commit
        and the next snapshot both ask, after the last batch)."""
        found = self._removed.get(kind)
        if found is None:
            found = self._removed[kind] = self._find_removed(kind)
        return found

    def _find_removed(self, kind: Kind) -> list[str]:
        base = self._bases.get(kind)
        if base is None:
            return []
        seen = self._seen[kind]
        # Every id skipped as unchanged is in the snapshot, so counting the new ones among
        # the few held tells how many of the snapshot's ids are missing without a set
        # difference; the walk over the snapshot stops at the last of them (a commit that
        # removed one instance of 10,000 walked all 10,000, half of them on average now).
        new = sum(1 for i in self._staged_ids[kind] if i not in base.keys)
        missing = len(base.keys) - (len(seen) - new)
        if missing <= 0:
            return []
        # Both crawls' ids listed in order (the snapshot's, if its commit listed them: a
        # list of pointers, cheaper than a lookup per id); this crawl's kept for the next.
        order = self._order[kind] = list(seen)
        before = base.order if base.order is not None else list(base.keys)
        return missing_ids(base.keys, before, seen, order, missing)

    def changed(self, kind: Kind) -> list[Record]:
        """Records held as different from the snapshot."""
        return self._held[kind]

    def snapshot(self, crawl_id: int, kind: Kind) -> Fingerprints | None:
        """The snapshot of ``kind`` once this crawl is committed as ``crawl_id`` (None for
        more records than remembered)."""
        keys = self._keys[kind] if self._bases.get(kind) is None else self._seen[kind]
        if keys is None or len(keys) > self._remember:
            return None
        return Fingerprints(crawl_id, keys, self._order.get(kind))

    def discard(self) -> None:
        """Drop the staged records (idempotent)."""
        self._open = False
        cursor, self._cursor = self._cursor, None
        if cursor is None:
            return
        for kind, appender in self._appenders.items():
            if self._pending[kind]:
                with contextlib.suppress(duckdb.Error):
                    appender.clear()  # rows never flushed: dropped with the rest
                self._pending[kind] = 0
        self._appenders = {}
        with contextlib.suppress(duckdb.Error):
            cursor.execute("USE memory")
            cursor.execute(f"DETACH {self.alias}")
        cursor.close()




#: Stage the versions of ids ``$ids`` as crawl ``$s`` saw them (``@stg@``: staging table).
AS_OF: Final = {
    "instances": f"""INSERT INTO @stg@ ({", ".join(INSTANCE_COLUMNS)})
        SELECT {", ".join(INSTANCE_COLUMNS)} FROM @h@.instance_versions
        WHERE account = $a AND first_crawl <= $s AND coalesce(until_crawl > $s, true)
          AND id IN (SELECT unnest($ids))""",
    "buckets": f"""INSERT INTO @stg@ ({", ".join(BUCKET_COLUMNS)})
        SELECT {", ".join("s.size_bytes" if c == "size_bytes" else f"v.{c}"
                          for c in BUCKET_COLUMNS)}
        FROM @h@.bucket_versions v JOIN @h@.bucket_sizes s
            ON s.account = v.account AND s.id = v.id
           AND s.first_crawl <= $s AND coalesce(s.until_crawl > $s, true)
        WHERE v.account = $a AND v.first_crawl <= $s AND coalesce(v.until_crawl > $s, true)
          AND v.id IN (SELECT unnest($ids))""",
}
