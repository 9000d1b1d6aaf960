"""The history store: DuckDB schema and migrations, atomic crawl commits, readers.

History is kept as changes, not copies (slowly changing dimension, type 2): a version of
an instance or bucket is observed by every successful crawl of its account and kind with
``first_crawl <= crawl_id < until_crawl`` (``until_crawl`` NULL while current). A year of
hourly crawls of a fleet that barely changes costs one row per change, not one per crawl.
Bucket sizes move with usage, so they live in their own narrow table (``bucket_sizes``)
and a size change never copies the rest of the bucket.

Commits only append (schema 3): ``instance_versions``, ``bucket_versions`` and
``bucket_sizes`` are views over logs (``instance_log``, ``bucket_log``,
``bucket_size_log``) where a crawl adds a row per changed record and a removal marker per
id it no longer saw. A version stays open (``until_crawl`` NULL in the log) until
compaction, which the writer runs once before it lets go of the file, writes in when the
next row of its id (a version or a marker) came; until then the view computes it with a
window over the open rows alone. So a commit never rewrites history rows, and the views
give the same answers before and after compaction, to any reader, even after a crash
that left the file uncompacted.

Concurrency: a crawl stages its records outside the database (a private in-memory DuckDB
database that spills to disk past the memory limit); ``commit`` attaches the database
read-write, applies the crawl in one transaction with set-based SQL, and detaches, so
the writer holds the file only while committing, or for a moment more during a burst of
commits. Readers attach read-only and retry briefly while a commit holds the file. How
files are attached, held and shared is :mod:`nexus_audit.history.duckfile`'s business.

Fast path: a Store remembers the current versions it last committed per account and kind
as fingerprints (a snapshot: id → hash, see ``_Snapshot``; tens of MB for 200,000
instances, where the records would take hundreds). The next crawl compares each batch
with it in C-level loops and keeps only the records that differ, in Python; the commit
closes and opens versions by id lists computed from the snapshot and inserts the new
versions from column lists, so an hourly crawl of a fleet that barely changes never
touches a staging database. If another process (or Store) committed in between, the
snapshot is stale: the records skipped as unchanged are staged from the history as the
snapshot's crawl saw it, and the full set-based comparison runs instead.

Observation time: a crawl observes the fleet at its ``finished_at``. Crawls of one
account and kind must be committed in the order they finished.
"""

# S608: only our own identifiers (column names, generated aliases) are formatted into SQL;
# every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import compress, filterfalse
from operator import itemgetter, ne
from pathlib import Path
from typing import Any, Final

import duckdb

from nexus_audit.domain.model import KINDS, Bucket, CrawlSummary, Instance, Kind
from nexus_audit.domain.timeutil import Clock, SystemClock, isoformat
from nexus_audit.errors import NoDataError, SchemaTooNewError, StoreError
from nexus_audit.history import duckfile

Record = Instance | Bucket
_INSTANCE_COLUMNS: Final = Instance._fields
_BUCKET_COLUMNS: Final = Bucket._fields
#: Bucket columns kept in ``bucket_versions`` (size lives in ``bucket_sizes``).
_BUCKET_VERSION_COLUMNS: Final = tuple(c for c in _BUCKET_COLUMNS if c != "size_bytes")

_STAGING_DDL: Final = (
    """CREATE TABLE instances (id VARCHAR NOT NULL, name VARCHAR, status VARCHAR,
        region VARCHAR, cpu INTEGER, memory_gb DOUBLE, plan VARCHAR, tags VARCHAR,
        created_at VARCHAR, extra VARCHAR)""",
    """CREATE TABLE buckets (id VARCHAR NOT NULL, region VARCHAR, size_bytes BIGINT,
        access VARCHAR, created_at VARCHAR, tags VARCHAR, extra VARCHAR)""",
)

#: Ordered schema migrations: (version, statements). Never edit a released entry; append.
MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (1, (
        "CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
        """CREATE TABLE crawls (
            crawl_id BIGINT PRIMARY KEY,
            account VARCHAR NOT NULL,
            kinds VARCHAR[] NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ NOT NULL,
            status VARCHAR NOT NULL,
            instances BIGINT NOT NULL,
            buckets BIGINT NOT NULL,
            requests BIGINT NOT NULL,
            retries BIGINT NOT NULL,
            total_mismatch VARCHAR,
            error VARCHAR,
            error_code VARCHAR,
            request_id VARCHAR,
            requests_by_endpoint JSON)""",
        """CREATE TABLE instance_versions (
            account VARCHAR NOT NULL, id VARCHAR NOT NULL, name VARCHAR, status VARCHAR,
            region VARCHAR, cpu INTEGER, memory_gb DOUBLE, plan VARCHAR, tags VARCHAR,
            created_at VARCHAR, extra VARCHAR,
            first_crawl BIGINT NOT NULL, until_crawl BIGINT)""",
        """CREATE TABLE bucket_versions (
            account VARCHAR NOT NULL, id VARCHAR NOT NULL, region VARCHAR, access VARCHAR,
            created_at VARCHAR, tags VARCHAR, extra VARCHAR,
            first_crawl BIGINT NOT NULL, until_crawl BIGINT)""",
        """CREATE TABLE bucket_sizes (
            account VARCHAR NOT NULL, id VARCHAR NOT NULL, size_bytes BIGINT NOT NULL,
            first_crawl BIGINT NOT NULL, until_crawl BIGINT)""",
    )),
    # v2: one row per (crawl, kind): the crawl sequence every per-kind rule walks.
    (2, (
        """CREATE VIEW kind_crawls AS
            SELECT crawl_id, account, unnest(kinds) AS kind, started_at, finished_at, status
            FROM crawls""",
    )),
    # v3: commits only append. Each version table becomes a log (plus removal markers) and
    # a view of the same name and columns; the view ends an open version at the next row
    # of its id (a version or a marker) until compaction writes that into until_crawl.
    (3, (
        "ALTER TABLE instance_versions RENAME TO instance_log",
        "ALTER TABLE instance_log ADD COLUMN removed BOOLEAN DEFAULT false",
        "ALTER TABLE bucket_versions RENAME TO bucket_log",
        "ALTER TABLE bucket_log ADD COLUMN removed BOOLEAN DEFAULT false",
        "ALTER TABLE bucket_sizes RENAME TO bucket_size_log",
        "ALTER TABLE bucket_size_log ADD COLUMN removed BOOLEAN DEFAULT false",
        "ALTER TABLE bucket_size_log ALTER COLUMN size_bytes DROP NOT NULL",  # markers
        """CREATE VIEW instance_versions AS
            SELECT account, id, name, status, region, cpu, memory_gb, plan, tags, created_at,
                   extra, first_crawl, until_crawl
            FROM instance_log WHERE until_crawl IS NOT NULL AND removed IS NOT TRUE
            UNION ALL
            SELECT account, id, name, status, region, cpu, memory_gb, plan, tags, created_at,
                   extra, first_crawl, until_crawl FROM (
                SELECT account, id, name, status, region, cpu, memory_gb, plan, tags,
                       created_at, extra, first_crawl, removed,
                       lead(first_crawl) OVER (PARTITION BY account, id ORDER BY first_crawl)
                           AS until_crawl
                FROM instance_log WHERE until_crawl IS NULL)
            WHERE removed IS NOT TRUE""",
        """CREATE VIEW bucket_versions AS
            SELECT account, id, region, access, created_at, tags, extra, first_crawl,
                   until_crawl
            FROM bucket_log WHERE until_crawl IS NOT NULL AND removed IS NOT TRUE
            UNION ALL
            SELECT account, id, region, access, created_at, tags, extra, first_crawl,
                   until_crawl FROM (
                SELECT account, id, region, access, created_at, tags, extra, first_crawl,
                       removed,
                       lead(first_crawl) OVER (PARTITION BY account, id ORDER BY first_crawl)
                           AS until_crawl
                FROM bucket_log WHERE until_crawl IS NULL)
            WHERE removed IS NOT TRUE""",
        """CREATE VIEW bucket_sizes AS
            SELECT account, id, size_bytes, first_crawl, until_crawl
            FROM bucket_size_log WHERE until_crawl IS NOT NULL AND removed IS NOT TRUE
            UNION ALL
            SELECT account, id, size_bytes, first_crawl, until_crawl FROM (
                SELECT account, id, size_bytes, first_crawl, removed,
                       lead(first_crawl) OVER (PARTITION BY account, id ORDER BY first_crawl)
                           AS until_crawl
                FROM bucket_size_log WHERE until_crawl IS NULL)
            WHERE removed IS NOT TRUE""",
    )),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1][0]



# ---------------------------------------------------------------------------------------
# Values handed to other layers.


@dataclass(frozen=True, slots=True, kw_only=True)
class CrawlInfo:
    """The last crawl of one kind of one account, for the exporter's health metrics."""

    crawl_id: int
    status: str
    started_at: datetime
    finished_at: datetime
    seconds: float
    requests: int
    retries: int
    total_mismatch: str | None
    error_code: str | None
    requests_by_endpoint: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountState:
    """One account's latest committed state: what ``/metrics`` shows."""

    account: str
    #: As of the latest successful crawl that covered instances (empty if none yet).
    instances: tuple[Instance, ...]
    #: As of the latest successful crawl that covered buckets (empty if none yet).
    buckets: tuple[Bucket, ...]
    instances_as_of: datetime | None
    buckets_as_of: datetime | None
    #: The last crawl (any status) that covered each kind.
    last_crawl: Mapping[Kind, CrawlInfo]
    #: ``finished_at`` of the last successful crawl of each kind.
    last_success: Mapping[Kind, datetime]
    #: Number of crawls of this account by status (``succeeded``, ``failed``).
    crawls_by_status: Mapping[str, int]


# ---------------------------------------------------------------------------------------
# Staging.

_record_id: Final = itemgetter(0)
_bucket_version_fields: Final = itemgetter(
    *(_BUCKET_COLUMNS.index(c) for c in _BUCKET_VERSION_COLUMNS))
_SIZE_FIELD: Final = _BUCKET_COLUMNS.index("size_bytes")


def _bucket_fingerprint(record: Bucket) -> tuple[int, object]:
    """A bucket's fingerprint: its versioned fields' hash and its size (kept apart)."""
    return hash(_bucket_version_fields(record)), record.size_bytes


#: Per kind, a record's fingerprint as kept in a snapshot (see :class:`_Snapshot`).
_FINGERPRINT: Final[Mapping[Kind, Callable[[Any], object]]] = {
    "instances": hash, "buckets": _bucket_fingerprint}


@dataclass(frozen=True, slots=True)
class _Snapshot:
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


class StagedCrawl:
    """The records of one crawl in progress, staged outside the database until commit.

    Implements the crawler's ``CrawlSink``. With a snapshot of the current versions (kept
    by the Store from its last commit), each batch is compared with it in C-level loops
    (``map`` and ``compress`` over fingerprints) and only the records that differ are
    kept, in Python: an hourly crawl of a fleet that barely changes stages nothing in
    DuckDB. Without a snapshot (a Store's first crawl of an account and kind), or once an
    id repeats within the crawl, records go to DuckDB's Appender as they come, into a
    private in-memory database of this process's hub, created on first use: columnar and
    compressed, so far smaller than the records as Python objects (a 200,000-instance first
    crawl stays under 300 MB RSS, see bench/crawl.py), and spilled to DuckDB's temp
    directory only past the hub's memory limit (DuckDB's default, 80% of RAM). Nothing is
    left behind by a killed process.
    """

    def __init__(self, account: str, kinds: tuple[Kind, ...], started_at: datetime,
                 bases: Mapping[Kind, _Snapshot | None] | None = None) -> None:
        self.account = account
        self.kinds = kinds
        self.started_at = started_at
        self.instance_count = 0
        self.bucket_count = 0
        self._bases: dict[Kind, _Snapshot | None] = {k: (bases or {}).get(k) for k in kinds}
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
        #: record seen last winning (the next snapshot).
        self._keys: dict[Kind, dict[str, object]] = {k: {} for k in kinds}
        #: Whether a kind's records go straight to DuckDB (no snapshot, or an id repeated).
        self._direct: dict[Kind, bool] = {k: self._bases[k] is None for k in kinds}
        self._duplicates: dict[Kind, bool] = dict.fromkeys(kinds, False)
        #: Rows appended to each DuckDB staging table.
        self._rows: dict[Kind, int] = dict.fromkeys(kinds, 0)
        self._removed: dict[Kind, list[str]] = {}
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
        if kind not in self.kinds:
            raise StoreError(f"this crawl does not cover {kind}")
        if not batch:
            return
        ids = list(map(_record_id, batch))
        fingerprints = list(map(_FINGERPRINT[kind], batch))
        base = self._bases[kind]
        # An id seen twice (pages shifting under churn) shows as a set or dict that grew
        # by less than the batch.
        seen = self._keys[kind] if base is None else self._seen[kind]
        before = len(seen)
        seen.update(zip(ids, fingerprints, strict=True))
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
        cursor = duckfile.hub_cursor()
        try:
            cursor.execute(f"ATTACH ':memory:' AS {self.alias}")
            cursor.execute(f"USE {self.alias}")
            for ddl in _STAGING_DDL:
                cursor.execute(ddl)
            self._appenders = {kind: cursor.appender(kind) for kind in KINDS}
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("USE memory")
                cursor.execute(f"DETACH {self.alias}")
            cursor.close()
            raise StoreError(f"cannot create a staging area: {exc}") from None
        self._cursor = cursor
        return cursor

    def _append(self, kind: Kind, batch: Sequence[Record]) -> None:
        if not batch:
            return
        self._staging_cursor()
        appender = self._appenders[kind]
        try:
            appender.append_rows(batch)
            appender.flush()
        except duckdb.Error as exc:
            raise StoreError(f"cannot stage {kind}: {exc}") from None
        self._rows[kind] += len(batch)

    def table(self, kind: Kind) -> str:
        """The qualified staging table of ``kind`` (created if nothing was staged yet)."""
        self._staging_cursor()
        return f"{self.alias}.{kind}"

    def base(self, kind: Kind) -> _Snapshot | None:
        """The snapshot this crawl was diffed against, if any."""
        return self._bases.get(kind)

    def diffable(self, kind: Kind, latest_crawl: int | None) -> bool:
        """Whether only the differences were kept and the snapshot is still current."""
        base = self._bases.get(kind)
        return (base is not None and not self._direct[kind]
                and base.crawl_id == latest_crawl)

    def unique(self, kind: Kind) -> bool:
        """Whether each id was seen once (so the staged table holds each id once)."""
        return not self._duplicates[kind]

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
        try:
            found = cursor.execute(
                _AS_OF[kind].replace("@h@", h).replace("@stg@", target),
                {"a": self.account, "s": base.crawl_id, "ids": skipped}).fetchone()
        except duckdb.Error as exc:
            raise StoreError(f"cannot stage {kind}: {exc}") from None
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
        # the few held tells whether anything is missing without a set difference.
        new = sum(1 for i in self._staged_ids[kind] if i not in base.keys)
        if len(seen) - new == len(base.keys):
            return []
        return list(filterfalse(seen.__contains__, base.keys))

    def changed(self, kind: Kind) -> list[Record]:
        """Records held as different from the snapshot."""
        return self._held[kind]

    def snapshot(self, crawl_id: int, kind: Kind) -> _Snapshot:
        """The snapshot of ``kind`` once this crawl is committed as ``crawl_id``."""
        base = self._bases.get(kind)
        if base is None:
            return _Snapshot(crawl_id, self._keys[kind])
        return _Snapshot(crawl_id, self._seen[kind])

    def discard(self) -> None:
        """Drop the staged records (idempotent)."""
        self._open = False
        cursor, self._cursor = self._cursor, None
        if cursor is None:
            return
        self._appenders = {}
        with contextlib.suppress(duckdb.Error):
            cursor.execute("USE memory")
            cursor.execute(f"DETACH {self.alias}")
        cursor.close()


# ---------------------------------------------------------------------------------------
# The store.


#: The log table behind each version view (schema 3).
_LOG: Final = {"instance_versions": "instance_log", "bucket_versions": "bucket_log",
               "bucket_sizes": "bucket_size_log"}
#: Per kind, the version views a crawl of it advances.
_VIEWS: Final[Mapping[Kind, tuple[str, ...]]] = {
    "instances": ("instance_versions",), "buckets": ("bucket_versions", "bucket_sizes")}


def _apply_sql(kind: Kind) -> tuple[str, ...]:
    """Set-based statements that advance one kind's history with one successful crawl.

    Parameters: ``$a`` account, ``$c`` crawl id. ``@new@`` is the staged table and ``@h@``
    the database's alias. Only appends: a record identical to its current version adds
    nothing; any other record adds a version (which ends the one before); an id absent
    from the crawl gets a removal marker (which ends its version).
    """
    def mark(view: str) -> str:
        return f"""INSERT INTO @h@.{_LOG[view]} (account, id, first_crawl, until_crawl, removed)
                   SELECT $a, v.id, $c, NULL, true FROM @h@.{view} v
                   WHERE v.account = $a AND v.until_crawl IS NULL
                     AND NOT EXISTS (SELECT 1 FROM @new@ n WHERE n.id = v.id)"""

    def add(view: str, cols: Sequence[str], same: str) -> str:
        col_list = ", ".join(cols)
        n_cols = ", ".join(f"n.{c}" for c in cols)
        return f"""INSERT INTO @h@.{_LOG[view]}
                       (account, {col_list}, first_crawl, until_crawl, removed)
                   SELECT $a, {n_cols}, $c, NULL, false FROM @new@ n
                   WHERE NOT EXISTS (SELECT 1 FROM @h@.{view} v
                       WHERE v.account = $a AND v.id = n.id AND v.until_crawl IS NULL
                         AND {same})"""

    def same(cols: Sequence[str]) -> str:
        return " AND ".join(f"n.{c} IS NOT DISTINCT FROM v.{c}" for c in cols[1:])

    if kind == "instances":
        return (mark("instance_versions"),
                add("instance_versions", _INSTANCE_COLUMNS, same(_INSTANCE_COLUMNS)))
    return (mark("bucket_versions"),
            add("bucket_versions", _BUCKET_VERSION_COLUMNS, same(_BUCKET_VERSION_COLUMNS)),
            mark("bucket_sizes"),
            add("bucket_sizes", ("id", "size_bytes"), "n.size_bytes = v.size_bytes"))


_APPLY: Final = {kind: _apply_sql(kind) for kind in KINDS}

#: Per version view: its record columns and their positions in the staged record.
_TABLE_FIELDS: Final = {
    "instance_versions": tuple((c, _INSTANCE_COLUMNS.index(c)) for c in _INSTANCE_COLUMNS),
    "bucket_versions": tuple((c, _BUCKET_COLUMNS.index(c)) for c in _BUCKET_VERSION_COLUMNS),
    "bucket_sizes": (("id", 0), ("size_bytes", _SIZE_FIELD)),
}


def _append_sql(view: str) -> str:
    """Append versions and removal markers to ``view``'s log from column lists (``$f0``,
    ``$f1``, ... and the markers' flags ``$rm``) zipped by ``unnest``.

    The lists are not cast (``$f0::VARCHAR[]``): a cast of a list parameter costs about a
    tenth of a millisecond a column, a third of the statement, while the INSERT casts each
    value to its column's type anyway (and refuses one that does not fit, as the cast
    would). A list of only NULLs (a column no record has) converts to ``NULL[]``.
    """
    fields = _TABLE_FIELDS[view]
    col_list = ", ".join(c for c, _ in fields)
    lists = ", ".join(f"unnest($f{n})" for n in range(len(fields)))
    return f"""INSERT INTO @h@.{_LOG[view]}
                   (account, {col_list}, first_crawl, until_crawl, removed)
               SELECT $a, {lists}, $c, NULL, unnest($rm)"""


_APPEND: Final = {view: _append_sql(view) for view in _TABLE_FIELDS}


def _append_params(view: str, records: Sequence[Record],
                   removed: Sequence[str]) -> dict[str, list[Any]]:
    """The column lists of ``records`` and of markers for ``removed`` for :func:`_append_sql`."""
    params: dict[str, list[Any]] = {}
    blanks = [None] * len(removed)
    for n, (_, i) in enumerate(_TABLE_FIELDS[view]):
        params[f"f{n}"] = [r[i] for r in records] + (list(removed) if i == 0 else blanks)
    params["rm"] = [False] * len(records) + [True] * len(removed)
    return params


def _diff_plan(kind: Kind, base: Mapping[str, object], changed: Sequence[Record],
               removed: Sequence[str]) -> dict[str, tuple[list[Record], list[str]]]:
    """Per version view, the records to add as versions and the ids to mark removed."""
    if kind == "instances":
        return {"instance_versions": (list(changed), list(removed))}
    versions: list[Record] = []
    sizes: list[Record] = []
    for record in changed:
        old = base.get(record[0])
        version, size = _bucket_fingerprint(record)  # type: ignore[arg-type]
        if old is None or old[0] != version:  # type: ignore[index]
            versions.append(record)
        if old is None or old[1] != size:  # type: ignore[index]
            sizes.append(record)
    return {"bucket_versions": (versions, list(removed)),
            "bucket_sizes": (sizes, list(removed))}


def _compact_sql(log: str) -> str:
    """Fill in ``until_crawl`` of ``log``'s versions that a later version or a removal marker
    ended, and close the markers themselves (their work done): afterwards only current
    versions are open. The views give the same answers before and after."""
    return f"""UPDATE @h@.{log} AS v SET until_crawl = n.until_crawl FROM (
            SELECT account, id, first_crawl,
                   CASE WHEN next IS NOT NULL THEN next WHEN removed THEN first_crawl END
                       AS until_crawl
            FROM (SELECT account, id, first_crawl, removed,
                         lead(first_crawl) OVER (PARTITION BY account, id
                                                 ORDER BY first_crawl) AS next
                  FROM @h@.{log} WHERE until_crawl IS NULL)) n
        WHERE v.until_crawl IS NULL AND n.until_crawl IS NOT NULL
          AND v.account = n.account AND v.id = n.id AND v.first_crawl = n.first_crawl"""


_COMPACT: Final = {log: _compact_sql(log) for log in _LOG.values()}
#: The memo key of the logs appended to since the last compaction.
_DIRTY: Final = "dirty"


@contextlib.contextmanager
def _transaction(cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One transaction on ``cursor``: committed when the block ends, rolled back if it raises.

    The connection's own ``begin``/``commit`` skip the parser: about 0.2 ms a commit less
    than the statements' text.
    """
    cursor.begin()
    try:
        yield
        cursor.commit()
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            cursor.rollback()
        raise


def _compact(commit: duckfile.Commit) -> None:
    """Compact the logs appended to while the file was attached (before it is let go)."""
    dirty = commit.memo.get(_DIRTY)
    if not dirty:
        return
    cursor, h = commit.cursor, commit.alias
    with _transaction(cursor):
        for log in sorted(dirty):
            cursor.execute(_COMPACT[log].replace("@h@", h))
    dirty.clear()


#: Stage the versions of ids ``$ids`` as crawl ``$s`` saw them (``@stg@``: staging table).
_AS_OF: Final = {
    "instances": f"""INSERT INTO @stg@ ({", ".join(_INSTANCE_COLUMNS)})
        SELECT {", ".join(_INSTANCE_COLUMNS)} FROM @h@.instance_versions
        WHERE account = $a AND first_crawl <= $s AND coalesce(until_crawl > $s, true)
          AND id IN (SELECT unnest($ids))""",
    "buckets": f"""INSERT INTO @stg@ ({", ".join(_BUCKET_COLUMNS)})
        SELECT {", ".join("s.size_bytes" if c == "size_bytes" else f"v.{c}"
                          for c in _BUCKET_COLUMNS)}
        FROM @h@.bucket_versions v JOIN @h@.bucket_sizes s
            ON s.account = v.account AND s.id = v.id
           AND s.first_crawl <= $s AND coalesce(s.until_crawl > $s, true)
        WHERE v.account = $a AND v.first_crawl <= $s AND coalesce(v.until_crawl > $s, true)
          AND v.id IN (SELECT unnest($ids))""",
}

#: What a commit checks before writing: the schema version, the latest crawl id, and per
#: kind (in :data:`KINDS` order) the account's latest successful crawl and its end. One
#: statement, aggregated over every crawl.
_WRITE_STATE: Final = """
    SELECT (SELECT value FROM @h@.meta WHERE key = 'schema_version'), * FROM (
        SELECT max(crawl_id),
               max(crawl_id) FILTER (account = $a AND status = 'succeeded'
                                     AND list_contains(kinds, 'instances')),
               max(finished_at) FILTER (account = $a AND status = 'succeeded'
                                        AND list_contains(kinds, 'instances')),
               max(crawl_id) FILTER (account = $a AND status = 'succeeded'
                                     AND list_contains(kinds, 'buckets')),
               max(finished_at) FILTER (account = $a AND status = 'succeeded'
                                        AND list_contains(kinds, 'buckets'))
        FROM @h@.crawls)"""
#: The same from the crawls since the oldest snapshot's, which is no earlier than anything
#: the answers for the snapshots' kinds depend on (crawls of one account and kind commit
#: in order): usually one row, and a plain scan costs a fraction of the aggregates above.
_CRAWLS_SINCE: Final = """
    SELECT (SELECT value FROM @h@.meta WHERE key = 'schema_version'), crawl_id, account,
           status, kinds, finished_at
    FROM @h@.crawls WHERE crawl_id >= $s"""
#: The memo key of the latest crawl id (see :meth:`Store._tail`).
_LAST_ID: Final = "last_id"


@dataclass(frozen=True, slots=True)
class _Tail:
    """Where the history ends, for a commit: the latest crawl id, and per kind committed
    the account's latest successful crawl and when it finished."""

    last_id: int
    crawl: dict[Kind, int | None]
    end: dict[Kind, datetime | None]


_INSERT_CRAWL: Final = """
    INSERT INTO @h@.crawls (crawl_id, account, kinds, started_at, finished_at, status,
        instances, buckets, requests, retries, total_mismatch, error, error_code, request_id,
        requests_by_endpoint)
    VALUES ($c, $account, $kinds, $started_at, $finished_at, $status, $instances, $buckets,
        $requests, $retries, $total_mismatch, $error, $error_code, $request_id, $rbe)"""


def _parsed(commit: duckfile.Commit, sql: str) -> duckdb.Statement:
    """``sql`` (one statement, on this attachment's alias) parsed once per hold of the file.

    A parsed statement runs about 0.2 ms faster than its text, three or four times a
    commit; the alias changes with each attach, and the memo with it.
    """
    key = ("parsed", sql)
    statement: duckdb.Statement | None = commit.memo.get(key)
    if statement is None:
        (statement,) = commit.cursor.extract_statements(sql)
        commit.memo[key] = statement
    return statement


def _check_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None:
        raise StoreError(f"{what} must be timezone-aware (UTC)")


class Store:
    """The DuckDB history database at ``path``."""

    def __init__(self, path: str | Path, *, lock_timeout: float = 30.0,
                 clock: Clock = SystemClock()) -> None:  # noqa: B008 - stateless default
        self.path = Path(path).expanduser().absolute()
        self.lock_timeout = lock_timeout
        self.clock = clock
        self._snapshots: dict[tuple[str, Kind], _Snapshot] = {}

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def close(self) -> None:
        """Let go of the file now if this process still holds it after a burst of commits.

        Checkpoints and detaches, so the file alone is the whole history (for a copy taken
        right after); otherwise that happens by itself within a fraction of a second, and
        at exit. The Store stays usable.
        """
        duckfile.release(self.path)

    # -- opening -----------------------------------------------------------------------

    def _open(self, read_only: bool) -> None:
        """Refuse to read a file that does not exist (it is never created for reading).

        A file that is not a DuckDB database is refused when it is attached (see
        :func:`duckfile.check_header`).
        """
        if read_only and not self.path.exists():
            raise NoDataError(f"no history database at {self.path} yet: run "
                              "`nexus-audit crawl` (or `serve`) first, or set NEXUS_AUDIT_DB")

    @staticmethod
    def _schema_version(cursor: duckdb.DuckDBPyConnection, alias: str) -> int | None:
        row = cursor.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = $d AND table_name = 'meta'",
            {"d": alias}).fetchone()
        if not row or not row[0]:
            return None
        found = cursor.execute(
            f"SELECT value FROM {alias}.meta WHERE key = 'schema_version'").fetchone()
        return int(found[0]) if found else None

    def _refuse_foreign(self, cursor: duckdb.DuckDBPyConnection, alias: str) -> None:
        """Refuse a DuckDB file that holds another program's tables (never add ours to it)."""
        found = cursor.execute(
            """SELECT table_name FROM duckdb_tables() WHERE database_name = $d
               UNION SELECT view_name FROM duckdb_views()
               WHERE database_name = $d AND NOT internal ORDER BY 1""", {"d": alias}).fetchall()
        if found:
            names = ", ".join(row[0] for row in found[:5]) + (", ..." if len(found) > 5 else "")
            raise StoreError(f"{self.path} is a DuckDB database of something else (it holds "
                             f"{names}, but no nexus-audit schema); it was left untouched "
                             "(point NEXUS_AUDIT_DB at another file)")

    def _refuse_newer(self, version: int | None) -> None:
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"{self.path} has schema version {version}, newer than this nexus-audit "
                f"understands ({SCHEMA_VERSION}); it was left untouched")

    def migrate(self, *, target: int = SCHEMA_VERSION) -> None:
        """Create the schema or upgrade an older one in place, in one transaction.

        A newer schema raises :class:`SchemaTooNewError`; a file that is not a DuckDB
        database raises :class:`StoreError` and is not touched. ``target`` is for tests
        of the upgrade path.
        """
        try:
            self._open(read_only=False)
            with duckfile.maintaining(self.path, timeout=self.lock_timeout,
                                      clock=self.clock) as (cursor, alias):
                current = self._schema_version(cursor, alias)
                self._refuse_newer(current)
                if current is None:
                    self._refuse_foreign(cursor, alias)
                pending = [(v, s) for v, s in MIGRATIONS if (current or 0) < v <= target]
                if not pending:
                    return
                with _transaction(cursor):
                    cursor.execute(f"USE {alias}")
                    for _version, statements in pending:
                        for statement in statements:
                            cursor.execute(statement)
                    cursor.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('schema_version', $v)",
                        {"v": str(pending[-1][0])})
        except duckdb.Error as exc:
            raise StoreError(f"cannot migrate {self.path}: {exc}") from None

    # -- writing -----------------------------------------------------------------------

    def begin_crawl(self, account: str, kinds: Sequence[Kind],
                    started_at: datetime) -> StagedCrawl:
        """Start staging one crawl of ``account`` covering ``kinds``."""
        chosen = tuple(k for k in KINDS if k in kinds)
        if not chosen or len(chosen) != len(set(kinds)):
            raise StoreError(f"a crawl covers one or more of {', '.join(KINDS)}; got {kinds!r}")
        if not account:
            raise StoreError("a crawl needs an account name")
        _check_aware(started_at, "started_at")
        bases = {k: self._snapshots.get((account, k)) for k in chosen}
        return StagedCrawl(account, chosen, started_at, bases)

    def commit(self, staged: StagedCrawl, summary: CrawlSummary) -> int:
        """Commit a successful crawl in one transaction: its row and its history changes.

        Returns the crawl id. The staged records are dropped whether or not it succeeds.
        """
        if summary.status != "succeeded":
            return self.record_failure(summary, staged)
        if summary.account != staged.account or set(summary.kinds) != set(staged.kinds):
            staged.discard()
            raise StoreError(
                f"the summary ({summary.account}, {summary.kinds}) does not match the staged "
                f"crawl ({staged.account}, {staged.kinds})")
        try:
            staged._require_open()
            return self._write(summary, staged)
        finally:
            staged.discard()

    def record_failure(self, summary: CrawlSummary, staged: StagedCrawl | None = None) -> int:
        """Record a failed crawl: its row only. Staged records are discarded."""
        if staged is not None:
            staged.discard()
        if summary.status != "failed":
            summary = _as_failed(summary)
        return self._write(summary, None)

    def _write(self, summary: CrawlSummary, staged: StagedCrawl | None) -> int:
        _check_aware(summary.started_at, "started_at")
        _check_aware(summary.finished_at, "finished_at")
        kinds = [k for k in KINDS if k in summary.kinds]
        account = summary.account
        try:
            self._open(read_only=False)
            with duckfile.committing(self.path, timeout=self.lock_timeout, clock=self.clock,
                                     settle=_compact) as commit:
                cursor, alias, memo = commit
                tail = self._tail(cursor, alias, account, kinds, memo)
                self._check_order(summary, tail, history=staged is not None)
                latest, crawl_id = tail.crawl, tail.last_id + 1
                diff: dict[Kind, bool] = {}
                if staged is not None:
                    for kind in kinds:
                        diff[kind] = staged.diffable(kind, latest[kind])
                        if not diff[kind]:
                            try:
                                staged.stage_all(kind, cursor, alias)
                            except StoreError:
                                self._snapshots.pop((account, kind), None)
                                raise
                            staged.table(kind)
                with _transaction(cursor):
                    self._insert_crawl(commit, summary, kinds, crawl_id)
                    if staged is not None:
                        for kind in kinds:
                            self._advance(commit, staged, kind, crawl_id, diff=diff[kind])
                memo[_LAST_ID] = crawl_id
                if staged is not None:
                    memo.setdefault(_DIRTY, set()).update(
                        _LOG[view] for kind in kinds for view in _VIEWS[kind])
                    for kind in kinds:
                        self._snapshots[(account, kind)] = staged.snapshot(crawl_id, kind)
                        memo[(account, kind)] = (crawl_id, summary.finished_at)
                return crawl_id
        except duckdb.Error as exc:
            raise StoreError(_write_failure(self.path, exc)) from None

    def _tail(self, cursor: duckdb.DuckDBPyConnection, h: str, account: str,
              kinds: list[Kind], memo: dict[Any, Any]) -> _Tail:
        """Where the history ends for a commit of ``account``'s ``kinds``; checks the schema.

        From ``memo`` while this process holds the file and already knows (see
        :class:`duckfile.Commit`); else one query, whose answers go to ``memo``.
        """
        last_id = memo.get(_LAST_ID)
        known = [memo.get((account, k)) for k in kinds]
        if last_id is not None and None not in known:
            return _Tail(last_id, {k: v[0] for k, v in zip(kinds, known, strict=True) if v},
                         {k: v[1] for k, v in zip(kinds, known, strict=True) if v})
        snapshots = [self._snapshots.get((account, k)) for k in kinds]
        state = None
        try:
            if snapshots and None not in snapshots:
                state = _state_from_rows(
                    cursor.execute(_CRAWLS_SINCE.replace("@h@", h),
                                   {"s": min(s.crawl_id for s in snapshots if s)}).fetchall(),
                    account)
            if state is None:  # no snapshot, or its crawl is gone (the file was replaced)
                state = cursor.execute(_WRITE_STATE.replace("@h@", h), {"a": account}).fetchone()
        except duckdb.CatalogException:
            state = None  # no meta or crawls table: not a migrated database
        version = int(state[0]) if state and state[0] is not None else None
        if state is None or version != SCHEMA_VERSION:
            if state is None:
                version = self._schema_version(cursor, h)
            self._refuse_newer(version)
            raise StoreError(f"{self.path} is not migrated (schema {version}, "
                             f"expected {SCHEMA_VERSION}); call migrate() first")
        _, latest_id, *per_kind = state
        tail = _Tail(int(latest_id or 0),
                     {k: per_kind[2 * n] for n, k in enumerate(KINDS) if k in kinds},
                     {k: per_kind[2 * n + 1] for n, k in enumerate(KINDS) if k in kinds})
        memo[_LAST_ID] = tail.last_id
        for kind in kinds:
            memo[(account, kind)] = (tail.crawl[kind], tail.end[kind])
        return tail

    @staticmethod
    def _check_order(summary: CrawlSummary, tail: _Tail, *, history: bool) -> None:
        """Refuse a crawl that finished before the latest committed one of its kinds."""
        latest_end = max((e for e in tail.end.values() if e is not None), default=None)
        if history and latest_end is not None and latest_end > summary.finished_at:
            raise StoreError(
                f"crawl of {summary.account} finished at {isoformat(summary.finished_at)}, "
                f"before the latest committed crawl of its kinds ({isoformat(latest_end)}); "
                "crawls of one account and kind must be committed in order")

    @staticmethod
    def _insert_crawl(commit: duckfile.Commit, summary: CrawlSummary,
                      kinds: list[Kind], crawl_id: int) -> None:
        """Insert the crawl's row."""
        commit.cursor.execute(_parsed(commit, _INSERT_CRAWL.replace("@h@", commit.alias)), {
            "c": crawl_id, "account": summary.account, "kinds": kinds,
            "started_at": summary.started_at, "finished_at": summary.finished_at,
            "status": summary.status, "instances": summary.instances,
            "buckets": summary.buckets, "requests": summary.requests,
            "retries": summary.retries, "total_mismatch": summary.total_mismatch,
            "error": summary.error, "error_code": summary.error_code,
            "request_id": summary.request_id,
            "rbe": json.dumps({k: dict(v) for k, v in summary.requests_by_endpoint.items()},
                              sort_keys=True),
        })

    @staticmethod
    def _advance(commit: duckfile.Commit, staged: StagedCrawl, kind: Kind, crawl_id: int, *,
                 diff: bool) -> None:
        """Apply one kind of a successful crawl: from the differences, or set-based in full."""
        cursor, h = commit.cursor, commit.alias
        params: dict[str, object] = {"a": staged.account, "c": crawl_id}
        base = staged.base(kind)
        if diff and base is not None:
            plan = _diff_plan(kind, base.keys, staged.changed(kind), staged.removed(kind))
            for view, (records, removed) in plan.items():
                if records or removed:
                    cursor.execute(_parsed(commit, _APPEND[view].replace("@h@", h)),
                                   {**params, **_append_params(view, records, removed)})
            return
        new = staged.table(kind)
        if not staged.unique(kind):
            # A crawl that saw an id twice (pages shifting under churn) keeps the record it
            # saw last; rare, so only then pay for the copy.
            cursor.execute(f"""CREATE OR REPLACE TEMP TABLE new_rows AS
                               SELECT DISTINCT ON (id) * FROM {new} ORDER BY id, rowid DESC""")
            new = "new_rows"
        for statement in _APPLY[kind]:
            cursor.execute(statement.replace("@h@", h).replace("@new@", new), params)

    # -- reading -----------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection whose default catalog is the history database.

        Retries while a commit (this process's or another's) holds the file, up to
        ``lock_timeout``. A missing file or an empty database raises :class:`NoDataError`
        (the file is never created); a newer schema :class:`SchemaTooNewError`.
        """
        self._open(read_only=True)
        with duckfile.reading(self.path, timeout=self.lock_timeout,
                              clock=self.clock) as (cursor, alias):
            try:
                version = self._schema_version(cursor, alias)
            except duckdb.Error as exc:
                raise StoreError(f"cannot read {self.path}: {exc}") from None
            if version is None:
                raise NoDataError(f"{self.path} holds no nexus-audit history yet")
            self._refuse_newer(version)
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, older than this nexus-audit's "
                    f"({SCHEMA_VERSION}); run `nexus-audit crawl` or `serve` once to upgrade it")
            cursor.execute(f"USE {alias}")
            yield cursor

    def previous_regions(self, account: str) -> list[str]:
        """Instance regions seen by the account's latest successful instance crawl."""
        try:
            with self.read() as con:
                rows = con.execute(
                    """SELECT DISTINCT region FROM instance_versions
                       WHERE account = $a AND until_crawl IS NULL ORDER BY region""",
                    {"a": account}).fetchall()
        except NoDataError:
            return []
        except duckdb.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from None
        return [r[0] for r in rows]

    def latest(self, kinds: Sequence[Kind] = KINDS) -> list[AccountState]:
        """Per account, the latest committed state (sorted by account).

        Only the records of ``kinds`` are read; the others come back empty (their
        ``*_as_of``, last crawl and last success are always filled). A bucket poll
        re-reads its few buckets, not the whole instance fleet.
        """
        try:
            with self.read() as con:
                return _latest(con, frozenset(kinds))
        except duckdb.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from None


_LAST_CRAWLS: Final = """
    SELECT account, kind, crawl_id, status, started_at, finished_at, requests, retries,
           total_mismatch, error_code, requests_by_endpoint
    FROM (SELECT c.*, unnest(c.kinds) AS kind FROM crawls c)
    QUALIFY row_number() OVER (PARTITION BY account, kind ORDER BY crawl_id DESC) = 1"""
_LAST_SUCCESS: Final = """
    SELECT account, kind, max(finished_at) FROM
        (SELECT account, unnest(kinds) AS kind, finished_at FROM crawls
         WHERE status = 'succeeded')
    GROUP BY ALL"""


def _latest(con: duckdb.DuckDBPyConnection, kinds: frozenset[Kind]) -> list[AccountState]:
    counts: dict[str, dict[str, int]] = {}
    for account, status, n in con.execute(
            "SELECT account, status, count(*) FROM crawls GROUP BY ALL").fetchall():
        counts.setdefault(account, {})[status] = int(n)
    last: dict[str, dict[Kind, CrawlInfo]] = {}
    for row in con.execute(_LAST_CRAWLS).fetchall():
        (account, kind, crawl_id, status, started, finished, requests, retries,
         mismatch, code, rbe) = row
        last.setdefault(account, {})[kind] = CrawlInfo(
            crawl_id=int(crawl_id), status=status, started_at=_utc(started),
            finished_at=_utc(finished), seconds=(finished - started).total_seconds(),
            requests=int(requests), retries=int(retries), total_mismatch=mismatch,
            error_code=code, requests_by_endpoint=json.loads(rbe) if rbe else {})
    success: dict[str, dict[Kind, datetime]] = {}
    for account, kind, finished in con.execute(_LAST_SUCCESS).fetchall():
        success.setdefault(account, {})[kind] = _utc(finished)
    instances: dict[str, list[Instance]] = {}
    cols = ", ".join(_INSTANCE_COLUMNS)
    make_instance = Instance._make
    rows = (con.execute(
        f"SELECT account, {cols} FROM instance_versions WHERE until_crawl IS NULL "
        "ORDER BY account, id").fetchall() if "instances" in kinds else [])
    for account, *fields in rows:
        instances.setdefault(account, []).append(make_instance(fields))
    buckets: dict[str, list[Bucket]] = {}
    bcols = ", ".join("s.size_bytes" if c == "size_bytes" else f"v.{c}" for c in _BUCKET_COLUMNS)
    make_bucket = Bucket._make
    rows = (con.execute(
        f"""SELECT v.account, {bcols} FROM bucket_versions v
            JOIN bucket_sizes s ON s.account = v.account AND s.id = v.id
                AND s.until_crawl IS NULL
            WHERE v.until_crawl IS NULL ORDER BY v.account, v.id""").fetchall()
        if "buckets" in kinds else [])
    for account, *fields in rows:
        buckets.setdefault(account, []).append(make_bucket(fields))
    states = []
    for account in sorted(counts):
        ok = success.get(account, {})
        states.append(AccountState(
            account=account,
            instances=tuple(instances.get(account, ())),
            buckets=tuple(buckets.get(account, ())),
            instances_as_of=ok.get("instances"),
            buckets_as_of=ok.get("buckets"),
            last_crawl=last.get(account, {}),
            last_success=ok,
            crawls_by_status=counts[account],
        ))
    return states


def _state_from_rows(rows: Sequence[tuple[Any, ...]], account: str) -> tuple[Any, ...] | None:
    """:data:`_WRITE_STATE`'s answer computed from :data:`_CRAWLS_SINCE`'s rows (None: no rows)."""
    if not rows:
        return None
    per_kind: list[Any] = []
    for kind in KINDS:
        ours = [row for row in rows
                if row[2] == account and row[3] == "succeeded" and kind in row[4]]
        per_kind += [max((row[1] for row in ours), default=None),
                     max((row[5] for row in ours), default=None)]
    return (rows[0][0], max(row[1] for row in rows), *per_kind)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _write_failure(path: Path, exc: duckdb.Error) -> str:
    text = str(exc)
    if "No space left" in text or ("disk" in text.lower() and "full" in text.lower()):
        return f"cannot write {path}: the disk is full; the crawl was not recorded ({text})"
    return f"cannot write {path}: {text}; the crawl was not recorded"


def _as_failed(summary: CrawlSummary) -> CrawlSummary:
    from dataclasses import replace

    return replace(summary, status="failed",
                   error=summary.error or "recorded as failed without an error message")
