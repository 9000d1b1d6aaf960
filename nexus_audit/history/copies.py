"""Copies of a database file for long reads (``serve``'s reports), so no commit waits for
them. How files are attached and held is told in :mod:`nexus_audit.history.duckfile`.

Long reads (``serve``'s reports) read a copy (:meth:`Copies.reading_copy`), never the file. A
read of the file holds the path lock from start to end, so a commit waits for it; 20
clients asking for reports over 60 days of history queued commits (and bucket polls) for
tens of seconds. Measured alternatives: readers checking a waiting writer between queries
would have to give up the file mid-report (a report's queries must see one state, so it
would start over, and with a commit every two seconds a report of a few seconds never
finishes); sharing one read-only attachment among readers still makes the writer wait for
the longest running read. A copy decouples them: made under the path lock while no commit
runs and the file is whole (a hold is let go first; another process's commit is kept out
by a read-only attach for the copy's duration), then attached read-only once and shared by
every concurrent long read, which run in parallel on it and never touch the path lock
again. A new copy is made only when the file changed since the last one (its inode, size
and modification time), so a copy costs one file copy per commit at most, only while
reports are asked for (3.4 MB for 60 days of 5,000 instances, a few milliseconds; the path
lock is held only for that). Each long read sees every crawl committed before it started.
An old copy is detached and deleted when its last reader finishes; copies live in a
directory next to the database (``.<db name>.copies-*``), removed at exit.

A process killed outright (``kill -9``, the OOM killer) cannot remove its directory: the
next process making a copy of that database does, once the owner's lock is gone
(:mod:`nexus_audit.history.owned`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from nexus_audit.errors import StoreError
from nexus_audit.history import owned
from nexus_audit.history.attach import sql_literal
from nexus_audit.history.cancel import interruptible

if TYPE_CHECKING:
    from nexus_audit.history.duckfile import DuckFiles


@dataclass(slots=True, eq=False)
class _Copy:
    """A read-only attached copy of a database file, shared by the reads using it."""

    path: Path
    alias: str
    #: The source file's (inode, size, modification time) when it was copied.
    stamp: tuple[int, int, int]
    users: int = 0
    retired: bool = False


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _copy_bytes(source: int, target: int) -> None:
    """Copy the whole file open as ``source`` into ``target`` (descriptors, not paths:
    closing a descriptor of an attached file would drop this process's lock on it)."""
    offset = 0
    while True:
        sent = os.sendfile(target, source, offset, 1 << 30)
        if sent == 0:
            return
        offset += sent


def _remove_copy_files(target: Path) -> None:
    for file in (target, target.with_name(target.name + ".wal")):
        with contextlib.suppress(OSError):
            file.unlink(missing_ok=True)


class Copies:
    """The copies one :class:`~nexus_audit.history.duckfile.DuckFiles` made, attached to
    its hub: the newest of each file, shared by the reads using it, and where they live.

    Made by the DuckFiles (its :attr:`~nexus_audit.history.duckfile.DuckFiles.copies`),
    which drops them when closed and at exit.
    """

    def __init__(self, files: DuckFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        #: Source path -> its newest copy.
        self._copies: dict[str, _Copy] = {}
        #: Source path -> the directory holding its copies (locked while it exists).
        self._dirs: dict[str, owned.OwnedDirectory] = {}

    def _new_directory(self, path: Path) -> owned.OwnedDirectory:
        """A locked directory for copies of ``path``, after removing those of dead owners."""
        return owned.make(path.parent, f".{path.name}.copies-")

    def _make(self, path: Path, *, timeout: float) -> _Copy:
        """Copy ``path`` (whole, with its write-ahead log if any) and attach the copy
        read-only. Call under the path lock, while ``path`` is held nowhere."""
        key = str(path)
        with self._lock:
            directory = self._dirs.get(key)
            if directory is None:
                directory = self._dirs[key] = self._new_directory(path)
        target = directory.path / (uuid.uuid4().hex[:12] + ".duckdb")
        try:
            # Opened before the read-only attach and closed after its detach, so closing
            # it drops no lock; the attach keeps other processes' commits out meanwhile.
            with path.open("rb") as source, \
                    self._files.attached(path, read_only=True, timeout=timeout):
                stamp = _stamp(path)
                with target.open("wb") as out:
                    _copy_bytes(source.fileno(), out.fileno())
                wal = path.with_name(path.name + ".wal")
                if wal.exists():  # left by a writer that was killed; replayed on attach
                    shutil.copyfile(wal, target.with_name(target.name + ".wal"))
            cursor = self._files.cursor()
            alias = "copy_" + uuid.uuid4().hex[:12]
            try:
                cursor.execute(f"ATTACH {sql_literal(str(target))} AS {alias} (READ_ONLY)")
            finally:
                cursor.close()
        except duckdb.Error as exc:
            _remove_copy_files(target)
            raise StoreError(f"cannot copy {path} for reading: {exc}") from None
        except OSError as exc:
            _remove_copy_files(target)
            raise StoreError(f"cannot copy {path} for reading into {directory}: "
                             f"{exc.strerror or exc}") from None
        except BaseException:
            _remove_copy_files(target)
            raise
        return _Copy(target, alias, stamp)

    def _drop(self, copy: _Copy) -> None:
        """Detach a copy nobody reads any more and delete its files."""
        with contextlib.suppress(StoreError):  # a closed hub has detached it already
            cursor = self._files.cursor()
            try:
                with contextlib.suppress(duckdb.Error):
                    cursor.execute(f"DETACH {copy.alias}")
            finally:
                with contextlib.suppress(duckdb.Error):
                    cursor.close()
        _remove_copy_files(copy.path)

    def _current(self, path: Path, *, timeout: float) -> _Copy:
        """The newest copy of ``path``, made now if the file changed since; one use
        counted."""
        key = str(path)
        with self._files.path_lock(path):
            # A held file is whole only after the writer lets go (its commits are in the
            # log).
            self._files.release(path)
            stamp = _stamp(path)
            with self._lock:
                current = self._copies.get(key)
                if current is not None and current.stamp == stamp:
                    current.users += 1
                    return current
            fresh = self._make(path, timeout=timeout)
            with self._lock:
                old = self._copies.get(key)
                self._copies[key] = fresh
                fresh.users += 1
                drop = old is not None and old.users == 0
                if old is not None:
                    old.retired = True
        if drop and old is not None:
            self._drop(old)
        return fresh

    def _done_with(self, copy: _Copy) -> None:
        with self._lock:
            copy.users -= 1
            drop = copy.retired and copy.users == 0
        if drop:
            self._drop(copy)

    @contextlib.contextmanager
    def reading_copy(self, path: Path, *, timeout: float,
                     ) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
        """``(cursor, alias)`` on a read-only copy of ``path`` as it is now: for long
        reads, which must never keep a commit waiting. The cursor is interrupted by the
        :class:`~nexus_audit.history.cancel.Cancel` of an enclosing ``cancellable``."""
        copy = self._current(path, timeout=timeout)
        try:
            cursor = self._files.cursor()
            try:
                with interruptible(cursor):
                    yield cursor, copy.alias
            finally:
                with contextlib.suppress(duckdb.Error):
                    cursor.close()
        finally:
            self._done_with(copy)

    @contextlib.contextmanager
    def holding_copy(self, path: Path, *, timeout: float) -> Iterator[Path]:
        """The path of a copy of ``path`` as it is now, kept until the block ends: for a
        read in another process (``serve``'s report workers), which attaches it itself."""
        copy = self._current(path, timeout=timeout)
        try:
            yield copy.path
        finally:
            self._done_with(copy)

    def drop(self) -> None:
        """Detach and delete every copy nobody reads (at exit: every copy) and their
        directories once empty."""
        with self._lock:
            idle = [(key, copy) for key, copy in self._copies.items() if copy.users == 0]
            for key, copy in idle:
                del self._copies[key]
                copy.retired = True
            directories = list(self._dirs.items())
        for _, copy in idle:
            self._drop(copy)
        for key, directory in directories:
            if directory.release():  # only when empty: a copy still read stays
                with self._lock:
                    self._dirs.pop(key, None)
