"""History export as hive-partitioned Parquet, and a reader that runs the audit queries on it.

Layout: ``DIR/<table>/account=<name>/date=<YYYY-MM-DD>/part-<uuid>.parquet`` for the
store's tables ``crawls``, ``instance_versions``, ``bucket_versions`` and ``bucket_sizes``
(``kind_crawls`` is a view over ``crawls``). The ``account`` and ``date`` columns live in
the path only; ``date`` is the UTC day of the crawl (``finished_at``) for ``crawls``, and of
the crawl that first observed the row (``first_crawl``) for the version tables.

``crawls`` carries each crawl's evidence-chain manifest (``manifest_seq``,
``manifest_hash``, ``manifest``), so an export is checked against the chain: each
manifest hashes to its hash and follows the one before, the chain head a report cites is
among them, and ``verify_history(ParquetHistory(DIR).read(), since=<the window's start>)``
recomputes the crawls of the window from the exported rows alone.

**Partitions are complete.** A written partition holds every row of its table, account and
day as the database knows them at export time. Rows are never deleted from history, so
replacing a partition with a newer export of it is always right, and exports of
successive windows into one directory add up to the database itself.

**What an export of ``[since, until)`` contains** (exactly what that window's report
reads, so the queries over the Parquet files give the same report as the database):

* ``crawls``: every crawl of the account up to ``until``'s day. Crawls are small (one row
  each) and the queries walk the whole sequence: the previous crawl (drift), the first
  crawl of a stream (``at_least``), coverage and streams.
* ``instance_versions``, ``bucket_versions``, ``bucket_sizes``: every version of every
  resource that some successful crawl from the last one before ``since`` (the baseline)
  to ``until`` observed, including its earlier versions (stale and exposure runs walk the
  chain back), and everything else in those versions' day partitions.

**Atomic.** Everything is written into a temporary directory inside ``DIR`` (the same file
system), each file and directory is fsynced, and only then is each partition moved into
place with one rename: a new partition appears whole; an existing one is swapped with
``renameat2(RENAME_EXCHANGE)`` where the kernel offers it (Linux), so a reader sees the
old partition or the new one, never a mix and never a half-written file. (Elsewhere the
old partition is moved aside first: a reader may then briefly miss it.) A failed export
removes its temporary directory and leaves ``DIR`` as it was. One export at a time per
directory (a lock file).
"""

# S608: only our own identifiers and escaped paths are formatted into SQL; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import duckdb

from nexus_audit.domain.timeutil import Window
from nexus_audit.errors import NexusAuditError
from nexus_audit.history.exports import TABLES, ParquetHistory, parquet_glob, write_marker
from nexus_audit.history.failures import translated
from nexus_audit.history.readers import resolve_accounts
from nexus_audit.history.store import Store
from nexus_audit.logs import get_logger

log = get_logger(__name__)

_TMP_PREFIX: Final = ".export-tmp-"
_LOCK_NAME: Final = ".export.lock"


class ExportError(NexusAuditError):
    """The export could not be written; the target directory was left as it was."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What one export wrote."""

    directory: Path
    window: Window
    accounts: tuple[str, ...]
    #: Rows and partitions written per table.
    rows: dict[str, int] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- choosing the rows ----------------------------------------------------------------------

# Temp tables on the read-only connection; $accounts, $since, $until are bound.
_SELECT: Final = (
    # Every crawl up to until's day, with its partition day.
    """CREATE OR REPLACE TEMP TABLE x_crawls AS
       SELECT *, CAST(finished_at AS DATE) AS date FROM crawls
       WHERE list_contains($accounts, account)
         AND CAST(finished_at AS DATE) <= CAST($until AS DATE)""",
    # Per (account, kind): the context starts at the last successful crawl before since.
    """CREATE OR REPLACE TEMP TABLE x_ctx AS
       SELECT account, kind,
              coalesce(max(finished_at) FILTER (WHERE status = 'succeeded'
                                                AND finished_at < $since), $since) AS start_t
       FROM kind_crawls WHERE list_contains($accounts, account) GROUP BY ALL""",
    # Resources some crawl from the baseline up to until observed.
    """CREATE OR REPLACE TEMP TABLE x_alive AS
       SELECT DISTINCT 'instances' AS kind, v.account, v.id FROM instance_versions v
       JOIN crawls f ON f.crawl_id = v.first_crawl
       LEFT JOIN crawls u ON u.crawl_id = v.until_crawl
       JOIN x_ctx c ON c.account = v.account AND c.kind = 'instances'
       WHERE list_contains($accounts, v.account) AND f.finished_at < $until
         AND (u.crawl_id IS NULL OR u.finished_at > c.start_t)
       UNION ALL
       SELECT DISTINCT 'buckets', v.account, v.id FROM bucket_versions v
       JOIN crawls f ON f.crawl_id = v.first_crawl
       LEFT JOIN crawls u ON u.crawl_id = v.until_crawl
       JOIN x_ctx c ON c.account = v.account AND c.kind = 'buckets'
       WHERE list_contains($accounts, v.account) AND f.finished_at < $until
         AND (u.crawl_id IS NULL OR u.finished_at > c.start_t)""",
)

# (table, kind of its resources) for the version tables.
_VERSION_TABLES: Final = (
    ("instance_versions", "instances"),
    ("bucket_versions", "buckets"),
    ("bucket_sizes", "buckets"),
)


def _version_rows(table: str, kind: str) -> tuple[str, str]:
    """Statements: the table's rows with their day, then the complete partitions to write."""
    dated = f"""CREATE OR REPLACE TEMP TABLE x_{table} AS
        SELECT v.*, CAST(f.finished_at AS DATE) AS date FROM {table} v
        JOIN crawls f ON f.crawl_id = v.first_crawl
        WHERE list_contains($accounts, v.account)"""
    chosen = f"""SELECT * FROM x_{table} WHERE (account, date) IN (
            SELECT DISTINCT x.account, x.date FROM x_{table} x
            JOIN x_alive a ON a.kind = '{kind}' AND a.account = x.account AND a.id = x.id)"""
    return dated, chosen


def _copy(con: duckdb.DuckDBPyConnection, select: str, params: dict[str, object],
          target: Path) -> int:
    """COPY a query to hive-partitioned Parquet under ``target``; returns the rows written."""
    found = con.execute(f"SELECT count(*) FROM ({select})", params).fetchone()
    rows = int(found[0]) if found else 0
    if rows:
        con.execute(
            f"COPY ({select}) TO {_literal(str(target))} (FORMAT parquet, "
            "PARTITION_BY (account, date), FILENAME_PATTERN 'part-{uuid}')", params)
    return rows


def _write_tables(con: duckdb.DuckDBPyConnection, staging: Path, window: Window,
                  wanted: Sequence[str] | None) -> tuple[list[str], dict[str, int]]:
    accounts = resolve_accounts(con, wanted)
    params: dict[str, object] = {"accounts": accounts, "since": window.since,
                                 "until": window.until}
    for statement in _SELECT:
        con.execute(statement, {k: v for k, v in params.items() if f"${k}" in statement})
    rows = {"crawls": _copy(con, "SELECT * FROM x_crawls", {}, staging / "crawls")}
    for table, kind in _VERSION_TABLES:
        dated, chosen = _version_rows(table, kind)
        con.execute(dated, {"accounts": accounts})
        rows[table] = _copy(con, chosen, {}, staging / table)
    return accounts, rows


# -- moving into place ----------------------------------------------------------------------

_RENAME_EXCHANGE: Final = 2
_AT_FDCWD: Final = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                       _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every directory, under ``root`` (deepest first)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(Path(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _partitions(staging: Path) -> Iterator[tuple[str, Path]]:
    """(table, partition directory relative to the table) of every staged partition."""
    for table in TABLES:
        base = staging / table
        if not base.is_dir():
            continue
        for account_dir in sorted(base.iterdir()):
            for date_dir in sorted(account_dir.iterdir()):
                yield table, date_dir.relative_to(base)


def _swap_in(staged: Path, dest: Path, trash: Path) -> None:
    """Move one staged partition to ``dest``, replacing an existing one atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        os.rename(staged, dest)
    elif _exchange(staged, dest):
        pass  # the old partition now sits at ``staged``, inside the staging directory
    else:
        trash.mkdir(parents=True, exist_ok=True)
        os.rename(dest, trash / uuid.uuid4().hex)
        os.rename(staged, dest)
    _fsync_dir(dest.parent)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One export at a time into ``directory``; leftovers of crashed exports are removed."""
    with (directory / _LOCK_NAME).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportError(f"another export is writing to {directory}") from None
        for leftover in directory.glob(_TMP_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def export_history(
    store: Store,
    directory: str | Path,
    window: Window,
    *,
    accounts: Sequence[str] | None = None,
    before_swap: Callable[[], None] | None = None,
) -> ExportResult:
    """Export the window's history to ``directory`` as hive-partitioned Parquet, atomically.

    ``before_swap`` runs after every file is written and synced, before anything moves into
    place (tests use it to fail an export at its last moment).
    """
    target = Path(directory).expanduser().absolute()
    # Refuse an empty history or an unknown account before creating anything: a failed
    # export leaves the directory as it was, including not there at all.
    with store.read() as con:
        resolve_accounts(con, accounts)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {target}: {exc.strerror or exc}") from None
    with _exclusive(target):
        staging = target / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            with translated(lambda exc: f"cannot export {store.path} to {target}: {exc}",
                            ExportError), store.read() as con:
                chosen, rows = _write_tables(con, staging, window, accounts)
            _fsync_tree(staging)
            if before_swap is not None:
                before_swap()
            counts: dict[str, int] = dict.fromkeys(TABLES, 0)
            for table, part in list(_partitions(staging)):
                _swap_in(staging / table / part, target / table / part, staging / ".old")
                counts[table] += 1
            write_marker(target, staging)
        except OSError as exc:
            raise ExportError(f"cannot write the export to {target}: "
                              f"{exc.strerror or exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.debug("export.done", directory=str(target), accounts=chosen, rows=rows,
             partitions=counts)
    return ExportResult(directory=target, window=window, accounts=tuple(chosen), rows=rows,
                        partitions=counts)


__all__ = ["TABLES", "ExportError", "ExportResult", "ParquetHistory", "export_history",
           "parquet_glob"]
