"""How much memory DuckDB may hold while this process commits, and where it spills.

Every database a process uses is attached to one in-memory DuckDB instance, the hub
(:class:`nexus_audit.history.duckfile.DuckFiles`): crawls being staged, the history while a
commit holds it, reads. DuckDB's default buffer pool is 80% of the machine's memory, and
it keeps what it takes: a set-based commit of a million instances grew the crawler past
700 MB. While a commit of a fleet too large for a Store to remember runs (more than
:data:`~nexus_audit.history.staging.REMEMBER_ROWS` records of a kind; smaller ones never
come near it, :meth:`MemoryLimit.bounded`), the limit is
:data:`MEMORY_LIMIT` and DuckDB works on one thread, and it writes what it cannot keep
(a staged crawl, the intermediate results of the commit's joins and windows) to
temporary files instead.
Outside commits the limit is DuckDB's own again: a report of a million instances took
three times as long at 128 MiB (its queries spilled, with schema 5's views), and staged
crawls are small (compressed: 40 MB for a million instances).

The spill directory is one of this process, under the system's temporary directory
(``TMPDIR``): ``nexus-audit-spill-<pid>-<random>`` (:func:`directory`), made with the hub
and removed when the hub closes or the process exits; one left by a process that was
killed is removed by the next process that starts a hub, once its owner's lock is gone
(:mod:`nexus_audit.history.owned`: never a live process's, in any PID namespace).

The limit covers DuckDB's buffer manager only (table blocks, hash tables, sorts); a query's
result while Python reads it and the Python objects themselves are outside it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TypeVar

import duckdb

from nexus_audit.errors import StoreError
from nexus_audit.history import owned
from nexus_audit.logs import get_logger

#: DuckDB's buffer manager limit while a commit runs, in MiB. With it a crawl of a
#: million instances and its commit stay near 300 MB RSS (README, "Scale"); a fleet of
#: tens of thousands never reaches it.
MEMORY_LIMIT_MIB: Final = 128
MEMORY_LIMIT: Final = f"{MEMORY_LIMIT_MIB}MiB"
#: The name of a spill directory: this prefix, the process id, a dash, a random part.
PREFIX: Final = "nexus-audit-spill-"

T = TypeVar("T")


def directory(temp_root: Path | None = None) -> owned.OwnedDirectory | None:
    """A spill directory of this process under ``temp_root`` (default: the system's
    temporary directory), for the hub's ``temp_directory``: never the working directory,
    DuckDB's default (``.tmp``). Spill directories of processes gone are removed first.

    None, with a warning, when it cannot be made (a temporary directory not writable):
    DuckDB then spills nowhere, and a bounded commit that runs out of memory runs once
    more unbounded (:meth:`MemoryLimit.run`) rather than fail.
    """
    root = Path(temp_root or tempfile.gettempdir())
    try:
        return owned.make(root, PREFIX, tag=f"{os.getpid()}-")
    except OSError as exc:
        get_logger(__name__).warning(
            "store.no_spill_directory", error=str(exc),
            hint="set TMPDIR to a writable directory: commits of large fleets then keep "
                 "less in memory")
        return None


class MemoryLimit:
    """DuckDB's memory limit on one hub (``cursor`` makes its cursors) while commits run."""

    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection], *,
                 limit: str = MEMORY_LIMIT) -> None:
        self._cursor = cursor
        self.limit = limit
        self._lock = threading.Lock()
        #: Blocks inside :meth:`bounded` now (commits of several files may overlap).
        self._depth = 0

    def __repr__(self) -> str:
        return f"<MemoryLimit {self.limit} while committing: {self._depth} inside>"

    def _set(self, statement: str) -> None:
        cursor = self._cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()

    @contextlib.contextmanager
    def bounded(self) -> Iterator[None]:
        """DuckDB's memory limited to :attr:`limit` (:data:`MEMORY_LIMIT`), and its work to
        one thread, while the block runs; DuckDB's defaults again once the last such
        block ends.

        Both are the instance's, so reads running meanwhile spill sooner and use one
        thread too. Best effort: if DuckDB cannot shrink to the limit (memory pinned by
        running queries), the commit runs unbounded rather than fail.
        """
        with self._lock:
            if self._depth == 0:
                try:
                    self._set(f"SET GLOBAL memory_limit = '{self.limit}'")
                    # One thread: two pin twice the blocks at once (each its share of a
                    # hash table or a sort), and the limit was hit in half the commits
                    # of a million instances with two, none in the runs with one.
                    self._set("SET GLOBAL threads = 1")
                except duckdb.Error as exc:
                    get_logger(__name__).warning("store.memory_unbounded", error=str(exc))
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    with contextlib.suppress(duckdb.Error, StoreError):  # closed meanwhile
                        self._set("RESET GLOBAL memory_limit")
                        self._set("RESET GLOBAL threads")

    def run(self, attempt: Callable[[contextlib.AbstractContextManager[None]], T]) -> T:
        """``attempt(self.bounded())``; if DuckDB ran out of memory there (a block it
        could not spill), once more with ``attempt(nullcontext())``: unbounded.

        For a commit: it is one transaction, so the failed attempt left nothing behind,
        and the crawl is recorded rather than refused for want of 128 MiB. A failure of
        the second attempt is the caller's, as any other.
        """
        try:
            return attempt(self.bounded())
        except Exception as exc:
            if not _out_of_memory(exc):
                raise
            get_logger(__name__).warning(
                "store.commit_unbounded", error=" ".join(str(exc).split())[:300],
                hint=f"DuckDB ran out of its {self.limit} during a commit; "
                     "committing again without the limit")
        return attempt(contextlib.nullcontext())

    def around(self, step: Callable[[T], None]) -> Callable[[T], None]:
        """``step`` run as :meth:`run` runs an attempt (a commit's last step, its
        compaction: one transaction too)."""
        def bounded_step(argument: T) -> None:
            def attempt(bounded: contextlib.AbstractContextManager[None]) -> None:
                with bounded:
                    step(argument)
            self.run(attempt)
        return bounded_step


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised from, DuckDB running out of memory."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, duckdb.OutOfMemoryException):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
