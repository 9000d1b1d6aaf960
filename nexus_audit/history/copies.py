"""Copies of a database file for long reads (``serve``'s reports), so no commit waits for
them; see "Long reads" in :mod:`nexus_audit.history.duckfile`'s docstring."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from nexus_audit.domain.timeutil import Clock
from nexus_audit.errors import StoreError
from nexus_audit.history.cancel import interruptible
from nexus_audit.history.duckfile import (
    _attached,
    hub_cursor,
    path_lock,
    release,
    sql_literal,
)


@dataclass(slots=True, eq=False)
class _Copy:
    """A read-only attached copy of a database file, shared by the reads using it."""

    path: Path
    alias: str
    #: The source file's (inode, size, modification time) when it was copied.
    stamp: tuple[int, int, int]
    users: int = 0
    retired: bool = False


_copies_lock = threading.Lock()
#: Whether the exit hook that drops the copies is registered (on the first copy, so after
#: the hub exists: it then runs before duckdb's own exit hook).
_hooked = False
#: Source path -> its newest copy.
_copies: dict[str, _Copy] = {}
#: Source path -> the directory holding its copies.
_copy_dirs: dict[str, Path] = {}


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


def _make_copy(path: Path, *, timeout: float, clock: Clock) -> _Copy:
    """Copy ``path`` (whole, with its write-ahead log if any) and attach the copy read-only.

    Call under the path lock, while this process holds ``path`` nowhere.
    """
    global _hooked
    key = str(path)
    with _copies_lock:
        if not _hooked:
            atexit.register(drop_copies)
            _hooked = True
        directory = _copy_dirs.get(key)
        if directory is None:
            directory = _copy_dirs[key] = Path(tempfile.mkdtemp(
                prefix=f".{path.name}.copies-", dir=path.parent))
    target = directory / (uuid.uuid4().hex[:12] + ".duckdb")
    try:
        # Opened before the read-only attach and closed after its detach, so closing it
        # drops no lock; the attach keeps other processes' commits out meanwhile.
        with path.open("rb") as source, \
                _attached(path, read_only=True, timeout=timeout, clock=clock):
            stamp = _stamp(path)
            with target.open("wb") as out:
                _copy_bytes(source.fileno(), out.fileno())
            wal = path.with_name(path.name + ".wal")
            if wal.exists():  # left by a writer that was killed; replayed on attach
                shutil.copyfile(wal, target.with_name(target.name + ".wal"))
        cursor = hub_cursor()
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


def _remove_copy_files(target: Path) -> None:
    for file in (target, target.with_name(target.name + ".wal")):
        with contextlib.suppress(OSError):
            file.unlink(missing_ok=True)


def _drop(copy: _Copy) -> None:
    """Detach a copy nobody reads any more and delete its files."""
    cursor = hub_cursor()
    try:
        with contextlib.suppress(duckdb.Error):
            cursor.execute(f"DETACH {copy.alias}")
    finally:
        with contextlib.suppress(duckdb.Error):
            cursor.close()
    _remove_copy_files(copy.path)


def _current_copy(path: Path, *, timeout: float, clock: Clock) -> _Copy:
    """The newest copy of ``path``, made now if the file changed since; one use counted."""
    key = str(path)
    with path_lock(path):
        # A held file is whole only after the writer lets go (its commits are in the log).
        release(path)
        stamp = _stamp(path)
        with _copies_lock:
            current = _copies.get(key)
            if current is not None and current.stamp == stamp:
                current.users += 1
                return current
        fresh = _make_copy(path, timeout=timeout, clock=clock)
        with _copies_lock:
            old = _copies.get(key)
            _copies[key] = fresh
            fresh.users += 1
            drop = old is not None and old.users == 0
            if old is not None:
                old.retired = True
    if drop and old is not None:
        _drop(old)
    return fresh


def _done_with(copy: _Copy) -> None:
    with _copies_lock:
        copy.users -= 1
        drop = copy.retired and copy.users == 0
    if drop:
        _drop(copy)


@contextlib.contextmanager
def reading_copy(path: Path, *, timeout: float, clock: Clock,
                 ) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
    """``(cursor, alias)`` on a read-only copy of ``path`` as it is now (see the module
    docstring): for long reads, which must never keep a commit waiting. The cursor is
    interrupted by the :class:`Cancel` of an enclosing :func:`cancellable`."""
    copy = _current_copy(path, timeout=timeout, clock=clock)
    try:
        cursor = hub_cursor()
        try:
            with interruptible(cursor):
                yield cursor, copy.alias
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.close()
    finally:
        _done_with(copy)


@contextlib.contextmanager
def holding_copy(path: Path, *, timeout: float, clock: Clock) -> Iterator[Path]:
    """The path of a copy of ``path`` as it is now, kept until the block ends: for a read
    in another process (``serve``'s report workers), which attaches it itself."""
    copy = _current_copy(path, timeout=timeout, clock=clock)
    try:
        yield copy.path
    finally:
        _done_with(copy)


def drop_copies() -> None:
    """Detach and delete every copy nobody reads (at exit: every copy) and their
    directories once empty."""
    with _copies_lock:
        idle = [(key, copy) for key, copy in _copies.items() if copy.users == 0]
        for key, copy in idle:
            del _copies[key]
            copy.retired = True
        directories = list(_copy_dirs.items())
    for _, copy in idle:
        _drop(copy)
    for key, directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty: a copy still read stays
            with _copies_lock:
                _copy_dirs.pop(key, None)
