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
database); ``commit`` attaches the database read-write, applies the crawl in one
transaction with set-based SQL (DuckDB's memory bounded for fleets too large to remember,
:mod:`nexus_audit.history.spill`), and detaches. Readers attach read-only and retry
briefly while a commit holds the file (:mod:`nexus_audit.history.duckfile`).

Fast path: a Store remembers the current versions it last committed per account and kind
as fingerprints (a snapshot: id → hash, see ``Fingerprints``; none for a fleet of more
than ``REMEMBER_ROWS``, compared in full each time). The next crawl keeps only the
records that differ from it; the commit closes and opens versions by id lists and inserts
the new versions from column lists. If another process committed in between, the
snapshot is stale: the records skipped as unchanged are staged from the history as the
snapshot's crawl saw it, and the full set-based comparison runs instead.

Evidence: each commit seals its crawl into a hash chain in the same transaction (the
manifest rides in the crawl's own row; see :mod:`nexus_audit.history.sealing`), and a
Store remembers each account's state sums next to its snapshots, so a commit hashes only
the rows it changes.

Observation time: a crawl observes the fleet at its ``finished_at``, and crawls of one
account and kind are ordered by crawl id (the order they were committed). A clock that
stepped back shows as a crawl finishing before crawls already committed for its account
and kinds: it is committed all the same and, in the same transaction, those earlier crawls
(any status) are re-dated to its ``finished_at`` (their observation cannot have been
later than a crawl committed after them), each correction kept in ``clock_skews`` (see
:func:`nexus_audit.history.writes.redate`). So ``finished_at`` never decreases along one
account and kind's crawl ids, queries that order by it stay consistent, and recording
goes on without a human.
"""


# S608: only our own identifiers (column names, generated aliases) are formatted into SQL;
# every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from nexus_audit.domain import exposure
from nexus_audit.domain.model import KINDS, CrawlSummary, Kind
from nexus_audit.domain.timeutil import Clock, SystemClock, isoformat
from nexus_audit.errors import NoDataError, SchemaTooNewError, StoreError
from nexus_audit.history import staging
from nexus_audit.history.chain import ViewState
from nexus_audit.history.duckfile import Commit, DuckFiles, process_files
from nexus_audit.history.failures import translated
from nexus_audit.history.plain import optimized, plain
from nexus_audit.history.readers import AccountState, CrawlInfo, read_latest
from nexus_audit.history.schema import CHAIN_MIGRATION, MIGRATIONS, SCHEMA_VERSION
from nexus_audit.history.sealing import HEAD, Plan, head_from_rows, seal, write_genesis
from nexus_audit.history.staging import REMEMBER_ROWS, Fingerprints, StagedCrawl
from nexus_audit.history.writes import (
    APPEND,
    APPLY,
    CRAWLS_SINCE,
    DIRTY,
    INSERT_CRAWL,
    LAST_ID,
    LOGS,
    WRITE_STATE,
    Tail,
    append_params,
    appended_logs,
    as_failed,
    compact,
    compact_log,
    crawl_row_params,
    diff_plan,
    parsed,
    redate,
    state_from_rows,
    transaction,
    write_failure,
)
from nexus_audit.logs import get_logger

log = get_logger(__name__)

#: The store's vocabulary, importable from here (each defined in its own module).
__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "AccountState", "CrawlInfo", "StagedCrawl", "Store"]

def _check_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None:
        raise StoreError(f"{what} must be timezone-aware (UTC)")


class Store:
    """The DuckDB history database at ``path``, reached through ``files`` (the process's
    own, :func:`process_files`, unless given: all users of a file in a process share one).
    ``clock``: the time recorded when a commit re-dates crawls (holds go by ``files``')."""

    def __init__(self, path: str | Path, *, lock_timeout: float = 30.0,
                 clock: Clock = SystemClock(),  # noqa: B008 - stateless default
                 files: DuckFiles | None = None, remember_rows: int = REMEMBER_ROWS,
                 remember_total: int = staging.REMEMBER_TOTAL) -> None:
        self.path = Path(path).expanduser().absolute()
        self.lock_timeout = lock_timeout
        self.clock = clock
        self.files = files if files is not None else process_files()
        #: The most records of a kind, and of all together, whose snapshots and evidence
        #: elements are kept for the next commit (:data:`REMEMBER_ROWS`, keep_snapshot).
        self.remember_rows, self.remember_total = remember_rows, remember_total
        self._snapshots: dict[tuple[str, Kind], Fingerprints] = {}
        #: Per (account, version view): its state sum as of this Store's last commit of it
        #: (the evidence chain's, see :mod:`nexus_audit.history.sealing`).
        self._states: dict[tuple[str, str], ViewState] = {}

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def close(self) -> None:
        """Let go of the file now if this process still holds it after a burst of commits.

        Checkpoints and detaches, so the file alone is the whole history (for a copy taken
        right after); otherwise that happens by itself within a fraction of a second, and
        at exit. The Store stays usable (and ``files`` open: it is not the Store's).
        """
        self.files.release(self.path)

    # -- opening -----------------------------------------------------------------------

    def _open(self, read_only: bool) -> None:
        """Refuse to read a file that does not exist (it is never created for reading).

        A file that is not a DuckDB database is refused when it is attached (see
        :func:`nexus_audit.history.attach.check_header`).
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
        with translated(lambda exc: f"cannot migrate {self.path}: {exc}"):
            self._open(read_only=False)
            with self.files.maintaining(self.path,
                                        timeout=self.lock_timeout) as (cursor, alias):
                current = self._schema_version(cursor, alias)
                self._refuse_newer(current)
                if current is None:
                    self._refuse_foreign(cursor, alias)
                pending = [(v, s) for v, s in MIGRATIONS if (current or 0) < v <= target]
                if not pending:
                    return
                with transaction(cursor):
                    cursor.execute(f"USE {alias}")
                    for _version, statements in pending:
                        for statement in statements:
                            cursor.execute(statement)
                    if current is not None and current < CHAIN_MIGRATION <= target:
                        write_genesis(cursor)  # the history held before the chain began
                    cursor.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('schema_version', $v)",
                        {"v": str(pending[-1][0])})

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
        return StagedCrawl(account, chosen, started_at, bases, hub=self.files.cursor,
                           remember=self.remember_rows)

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
            summary = as_failed(summary)
        return self._write(summary, None)

    def _write(self, summary: CrawlSummary, staged: StagedCrawl | None) -> int:
        _check_aware(summary.started_at, "started_at")
        _check_aware(summary.finished_at, "finished_at")
        if staged is None or max(staged.instance_count,
                                 staged.bucket_count) <= self.remember_rows:
            # Never near the limit: DuckDB keeps its threads (and reads meanwhile theirs).
            return self._write_once(summary, staged, contextlib.nullcontext(), compact)
        # DuckDB's memory bounded while the commit and its compaction run; once more
        # unbounded if DuckDB ran out of it (spill.py).
        memory = self.files.memory
        return memory.run(lambda bounded: self._write_once(summary, staged, bounded,
                                                           memory.around(compact),
                                                           large=True))

    def _write_once(self, summary: CrawlSummary, staged: StagedCrawl | None,
                    bounded: contextlib.AbstractContextManager[None],
                    settle: Callable[[Commit], None], *, large: bool = False) -> int:
        kinds = [k for k in KINDS if k in summary.kinds]
        account = summary.account
        with translated(lambda exc: write_failure(self.path, exc)):
            self._open(read_only=False)
            with self.files.committing(self.path, timeout=self.lock_timeout,
                                       settle=settle) as commit, \
                    bounded:
                cursor, alias, memo = commit
                tail = self._tail(cursor, alias, account, kinds, memo)
                latest, crawl_id = tail.crawl, tail.last_id + 1
                diff: dict[Kind, bool] = {}
                if staged is not None:
                    for kind in kinds:
                        diff[kind] = staged.diffable(kind, latest[kind])
                        if not diff[kind]:
                            try:
                                optimized(cursor, memo)
                                staged.stage_all(kind, cursor, alias)
                            except StoreError:
                                self._snapshots.pop((account, kind), None)
                                raise
                            staged.table(kind)
                end = summary.finished_at
                ahead = [t for t in (tail.any_end[k] for k in kinds) if t is not None and t > end]
                plans: dict[Kind, Plan | None] = {}
                with transaction(cursor):
                    skews = (redate(commit, account, kinds, end, crawl_id, self.clock.now())
                             if ahead else [])
                    # History first, then the crawl's row with its manifest over it.
                    if staged is not None:
                        for kind in kinds:
                            plans[kind] = self._advance(commit, staged, kind, crawl_id,
                                                        diff=diff[kind])
                    row = crawl_row_params(summary, kinds, crawl_id)
                    early = (lambda view: compact_log(commit, LOGS[view])) if large else None
                    sealed = seal(commit, row, account=account, kinds=kinds,
                                  succeeded=staged is not None, plans=plans,
                                  previous=latest, memory=self._states, corrections=skews,
                                  keep=self.remember_rows, before_full=early)
                    plain(commit)
                    cursor.execute(parsed(commit, INSERT_CRAWL.replace("@h@", alias)),
                                   {**row, **sealed.params()})
                memo[LAST_ID] = crawl_id
                memo[HEAD] = (sealed.seq, sealed.hash, crawl_id)
                sealed.remember(self._states)
                for kind in KINDS:
                    if kind not in kinds and any(kind in s.kinds for s in skews):
                        memo.pop((account, kind), None)  # re-dated: ask the database
                for kind in kinds:
                    success = tail.end[kind]
                    memo[(account, kind)] = (
                        tail.crawl[kind], None if success is None else min(success, end), end)
                if staged is not None:
                    memo.setdefault(DIRTY, set()).update(appended_logs(kinds, plans))
                    for kind in kinds:
                        staging.keep_snapshot(self._snapshots, self._states, account, kind,
                                              staged.snapshot(crawl_id, kind),
                                              self.remember_total)
                        memo[(account, kind)] = (crawl_id, end, end)
                if skews:
                    log.warning("store.clock_skew", account=account, kinds=list(kinds),
                                crawl_id=crawl_id, finished_at=isoformat(end),
                                seconds=round(max(s.seconds for s in skews), 3),
                                redated=[s.crawl_id for s in skews],
                                hint="a crawl finished before crawls committed earlier (the "
                                     "clock stepped back?); those were re-dated to its end")
                return crawl_id

    def _tail(self, cursor: duckdb.DuckDBPyConnection, h: str, account: str,
              kinds: list[Kind], memo: dict[Any, Any]) -> Tail:
        """Where the history ends for a commit of ``account``'s ``kinds``; checks the schema.

        From ``memo`` while this process holds the file and already knows (see
        :class:`Commit`); else one query, whose answers go to ``memo``.
        """
        last_id = memo.get(LAST_ID)
        known = [memo.get((account, k)) for k in kinds]
        if last_id is not None and None not in known:
            return Tail(last_id, {k: v[0] for k, v in zip(kinds, known, strict=True) if v},
                        {k: v[1] for k, v in zip(kinds, known, strict=True) if v},
                        {k: v[2] for k, v in zip(kinds, known, strict=True) if v})
        snapshots = [self._snapshots.get((account, k)) for k in kinds]
        state = None
        optimized(cursor, memo)
        try:
            if snapshots and None not in snapshots:
                rows = cursor.execute(CRAWLS_SINCE.replace("@h@", h),
                                      {"s": min(s.crawl_id for s in snapshots if s)}
                                      ).fetchall()
                state = state_from_rows(rows, account)
                head_from_rows(memo, rows)
            if state is None:  # no snapshot, or its crawl is gone (the file was replaced)
                state = cursor.execute(WRITE_STATE.replace("@h@", h), {"a": account}).fetchone()
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
        tail = Tail(int(latest_id or 0),
                    {k: per_kind[3 * n] for n, k in enumerate(KINDS) if k in kinds},
                    {k: per_kind[3 * n + 1] for n, k in enumerate(KINDS) if k in kinds},
                    {k: per_kind[3 * n + 2] for n, k in enumerate(KINDS) if k in kinds})
        memo[LAST_ID] = tail.last_id
        for kind in kinds:
            memo[(account, kind)] = (tail.crawl[kind], tail.end[kind], tail.any_end[kind])
        return tail

    @staticmethod
    def _advance(commit: Commit, staged: StagedCrawl, kind: Kind, crawl_id: int, *,
                 diff: bool) -> Plan | None:
        """Apply one kind of a successful crawl: from the differences (returned, for the
        evidence chain), or set-based in full (None)."""
        cursor, h = commit.cursor, commit.alias
        params: dict[str, object] = {"a": staged.account, "c": crawl_id}
        base = staged.base(kind)
        if diff and base is not None:
            plan = diff_plan(kind, base.keys, staged.changed(kind), staged.removed(kind))
            plain(commit)
            for view, (records, removed) in plan.items():
                if records or removed:
                    cursor.execute(parsed(commit, APPEND[view].replace("@h@", h)),
                                   {**params, **append_params(view, records, removed)})
            return plan
        new = staged.table(kind)
        optimized(cursor, commit.memo)
        if not staged.unique(kind):
            # A crawl that saw an id twice (pages shifting under churn) keeps the record it
            # saw last; rare, so only then pay for the copy.
            cursor.execute(f"""CREATE OR REPLACE TEMP TABLE new_rows AS
                               SELECT DISTINCT ON (id) * FROM {new} ORDER BY id, rowid DESC""")
            new = "new_rows"
        for statement in APPLY[kind]:
            cursor.execute(statement.replace("@h@", h).replace("@new@", new), params)
        return None

    # -- reading -----------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self, *, copy: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection whose default catalog is the history database.

        Retries while a commit (this process's or another's) holds the file, up to
        ``lock_timeout``. A missing file or an empty database raises :class:`NoDataError`
        (the file is never created); a newer schema :class:`SchemaTooNewError`. The
        connection has the ``is_exposed(access)`` macro the queries use
        (:func:`nexus_audit.domain.exposure.install`). ``copy``: read a copy of the file
        as it is now, so no commit waits for this read (for long reads; see
        :meth:`Copies.reading_copy <nexus_audit.history.copies.Copies.reading_copy>`).
        """
        self._open(read_only=True)
        opener = self.files.copies.reading_copy if copy else self.files.reading
        with opener(self.path, timeout=self.lock_timeout) as (cursor, alias), \
                translated(lambda exc: f"cannot read {self.path}: {exc}"):
            # Everything read on this connection, by any caller, fails as a StoreError.
            version = self._schema_version(cursor, alias)
            if version is None:
                raise NoDataError(f"{self.path} holds no nexus-audit history yet")
            self._refuse_newer(version)
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, older than this nexus-audit's "
                    f"({SCHEMA_VERSION}); run `nexus-audit crawl` or `serve` once to upgrade it")
            cursor.execute(f"USE {alias}")
            exposure.install(cursor)
            yield cursor

    @contextlib.contextmanager
    def copy_for_reading(self) -> Iterator[Path]:
        """The path of a copy of the file as it is now, kept while inside (for a read in
        another process; see :meth:`~nexus_audit.history.copies.Copies.holding_copy`).
        ``NoDataError`` when the file does not exist."""
        self._open(read_only=True)
        with self.files.copies.holding_copy(self.path, timeout=self.lock_timeout) as copy:
            yield copy

    def copied(self) -> CopiedHistory:
        """This history read through copies (``read(copy=True)``), for ``build_report``."""
        return CopiedHistory(self)

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
        return [r[0] for r in rows]

    def latest(self, kinds: Sequence[Kind] = KINDS, *, records: bool = True,
               accounts: Sequence[str] | None = None) -> list[AccountState]:
        """Per account, the latest committed state (sorted by account).

        Only the records of ``kinds`` are read; the others come back empty (their
        ``*_as_of``, last crawl and last success are always filled). A bucket poll
        re-reads its few buckets, not the whole instance fleet. Without ``records``, the
        instances come counted by region, status and shape (``instance_groups``). Only
        the ``accounts`` named, when given (those without any crawl are left out)."""
        with self.read() as con:
            return read_latest(con, frozenset(kinds), records=records, accounts=accounts)


class CopiedHistory:
    """A :class:`Store` whose reads go to a copy of the file (see ``Store.read``): a long
    read through it never keeps a commit waiting."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def path(self) -> Path:
        """The database file, for error messages."""
        return self.store.path

    def read(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A read-only connection on a copy of the history as it is now."""
        return self.store.read(copy=True)

