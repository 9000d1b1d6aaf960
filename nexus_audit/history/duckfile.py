"""How this process reaches DuckDB files: one hub instance, per-path locks, attach with retry,
and the writer's short hold on a file between commits that come in a burst.

DuckDB lets one process write a file and then refuses every other process, even read-only.
So a writer attaches a file only to commit and detaches after (detaching checkpoints, so
the file alone is the whole history and readers never replay a write-ahead log); a reader
attaches read-only and retries briefly while a commit holds the file.

Attaching costs about a millisecond and the checkpoint on detach several, more than the
commit itself. So when commits come in a burst (a commit finishing within :data:`LINGER`
of the previous one on the same file: several accounts finishing together, a backfill),
the writer keeps the file attached and commits go to the write-ahead log (each still
durable at its COMMIT), until the burst ends (no commit for :data:`LINGER`), it has held
the file for :data:`MAX_HOLD`, another process is waiting for the file, or the process
exits; then it checkpoints and detaches. A process that is killed while holding leaves
the log, which DuckDB replays on the next attach.

Other processes ask for a turn with a marker file next to the database (``<db>.wait``),
touched while they retry and removed once they got in. A holder lets go after its next
commit (or at once if idle) when it sees a fresh marker, and a writer about to attach
waits for a fresh marker to clear first, so a reader gets in between two commits even
when the writer commits back to back.

Inside one process, DuckDB refuses to attach one file read-write and read-only at once,
so a per-path lock serializes this process's reads and commits; reads while the file is
held go through the writer's attachment (they see every committed crawl).

DuckDB's lock on a file is a POSIX record lock, which a process loses as soon as it closes
*any* descriptor of that file. So this process never opens an attached file itself: the
header check runs only right before attaching, under the path lock (and a copy, below,
opens the file before attaching it and closes it after detaching).

Long reads (``serve``'s reports) read a copy (``copies.reading_copy``), never the file. A
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

The copies are :mod:`nexus_audit.history.copies`' business. A long read can be cancelled
(:mod:`nexus_audit.history.cancel`): the DuckDB connection it reads through is interrupted.
"""

from __future__ import annotations

import atexit
import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import duckdb

from nexus_audit.domain.timeutil import Clock
from nexus_audit.errors import StoreError
from nexus_audit.history.cancel import interruptible
from nexus_audit.logs import get_logger

#: A commit finishing within this long of the previous one on the same file keeps it held;
#: a held file is let go once no commit came for this long.
LINGER: Final = 0.25
#: The longest a file stays held in one go (bounds the write-ahead log, and the time a
#: copy of the file alone lags the history).
MAX_HOLD: Final = 5.0
#: A marker touched within this long means another process is waiting for the file.
MARKER_FRESH: Final = 1.0
#: The longest a writer defers attaching to a waiting process.
YIELD_AT_MOST: Final = 1.0

_LOCK_CONFLICT: Final = re.compile(r"Could not set lock|Conflicting lock", re.IGNORECASE)
_DUCKDB_MAGIC: Final = b"DUCK"

_hub_lock = threading.Lock()
_hub: duckdb.DuckDBPyConnection | None = None
_path_locks: dict[str, threading.RLock] = {}


def hub_cursor() -> duckdb.DuckDBPyConnection:
    """A fresh connection (cursor) on the process's in-memory hub instance.

    One long-lived instance per process: attaching a file to it costs about a millisecond,
    starting an instance twenty.
    """
    global _hub
    with _hub_lock:
        if _hub is None:
            hub = duckdb.connect(":memory:")
            # Global, so every cursor starts with it (a SET per cursor costs a statement).
            hub.execute("SET GLOBAL TimeZone = 'UTC'")
            _hub = hub
            # Registered after the hub exists, so it runs before any exit hook the duckdb
            # module registers on its first connection (atexit runs hooks last-in first).
            atexit.register(_at_exit)
        return _hub.cursor()


def path_lock(path: Path) -> threading.RLock:
    """The lock that serializes this process's use of the file at ``path``."""
    key = str(path)
    with _hub_lock:
        lock = _path_locks.get(key)
        if lock is None:
            lock = _path_locks[key] = threading.RLock()
        return lock


def sql_literal(text: str) -> str:
    """A SQL string literal (ATTACH takes no bound parameters; paths are ours, not users')."""
    return "'" + text.replace("'", "''") + "'"


def is_lock_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` says another process holds the file."""
    return isinstance(exc, duckdb.Error) and bool(_LOCK_CONFLICT.search(str(exc)))


# ---------------------------------------------------------------------------------------
# Asking another process for a turn.


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".wait")


def _touch_marker(path: Path) -> None:
    # Best effort: a read-only directory only loses the fairness, never the read.
    with contextlib.suppress(OSError):
        _marker(path).touch()


def _clear_marker(path: Path) -> None:
    with contextlib.suppress(OSError):
        _marker(path).unlink(missing_ok=True)


def someone_waits(path: Path) -> bool:
    """Whether another process touched the file's marker recently."""
    try:
        touched = _marker(path).stat().st_mtime
    except OSError:
        return False
    return time.time() - touched < MARKER_FRESH


# ---------------------------------------------------------------------------------------
# Attaching.


def check_header(path: Path) -> None:
    """Refuse, without writing, a file that is not a DuckDB database (a missing one is fine).

    Opens and closes the file: call it only while this process has it attached nowhere
    (closing a descriptor drops the process's DuckDB lock on the file).
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(12)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(head) < 12 or head[8:12] != _DUCKDB_MAGIC:
        raise StoreError(f"{path} is not a DuckDB database; it was left untouched "
                         "(point NEXUS_AUDIT_DB at another file)")


def _attach(path: Path, *, read_only: bool, timeout: float,
            clock: Clock) -> tuple[duckdb.DuckDBPyConnection, str]:
    """Attach ``path`` on a new hub cursor, retrying while another process holds it.

    Called under the path lock, never while this process has ``path`` attached.
    """
    check_header(path)
    cursor = hub_cursor()
    alias = "db_" + uuid.uuid4().hex[:12]
    mode = " (READ_ONLY)" if read_only else ""
    deadline = clock.monotonic() + timeout
    delay = 0.005
    waited = False
    try:
        while True:
            try:
                cursor.execute(f"ATTACH {sql_literal(str(path))} AS {alias}{mode}")
                break
            except duckdb.Error as exc:
                if not is_lock_conflict(exc):
                    raise StoreError(f"cannot open {path}: {exc}") from None
                if clock.monotonic() >= deadline:
                    raise StoreError(f"database busy: {path} stayed locked by another process "
                                     f"for {timeout:g}s") from None
                _touch_marker(path)
                waited = True
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
    except BaseException:
        cursor.close()
        raise
    finally:
        if waited:
            _clear_marker(path)
    return cursor, alias


def _detach(cursor: duckdb.DuckDBPyConnection, alias: str, *, settled: bool) -> None:
    """Detach (which checkpoints) and close the cursor; errors are not the caller's."""
    try:
        if not settled:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
            with contextlib.suppress(duckdb.Error):
                cursor.execute("USE memory")
        with contextlib.suppress(duckdb.Error):
            cursor.execute(f"DETACH {alias}")
    finally:
        with contextlib.suppress(duckdb.Error):
            cursor.close()


class Commit(NamedTuple):
    """What :func:`committing` hands a committer."""

    cursor: duckdb.DuckDBPyConnection
    alias: str
    #: Facts the committer learned about the file, kept while this process holds it (so
    #: true until then: nobody else can write it). Empty after a fresh attach.
    memo: dict[Any, Any]


@dataclass(slots=True)
class _Hold:
    """A file this process keeps attached read-write between the commits of a burst."""

    cursor: duckdb.DuckDBPyConnection
    alias: str
    since: float
    last: float
    memo: dict[Any, Any]
    settle: Callable[[Commit], None] | None
    timer: threading.Timer | None = None


_holds: dict[str, _Hold] = {}
#: Set at exit: timers no longer touch DuckDB (see :func:`_at_exit`).
_closing = False
#: When the last commit on each path finished (monotonic), to tell a burst.
_last_commit: dict[str, float] = {}


def holding(path: Path) -> bool:
    """Whether this process holds ``path`` attached between commits right now."""
    return str(path) in _holds


def release(path: Path, *, settle: bool = True) -> None:
    """Let go of ``path`` if this process holds it: settle, checkpoint and detach.

    ``settle=False`` skips the committer's last step (after a failed commit).
    """
    with path_lock(path):
        hold = _holds.pop(str(path), None)
        if hold is None:
            return
        if hold.timer is not None:
            hold.timer.cancel()
        if settle:
            _settle(hold.settle, Commit(hold.cursor, hold.alias, hold.memo), path)
        _detach(hold.cursor, hold.alias, settled=True)
        # The cursor object goes here, under the lock, not when this frame is cleared.
        del hold


def _settle(settle: Callable[[Commit], None] | None, commit: Commit, path: Path) -> None:
    """Run the committer's last step before letting go; a failure there loses nothing
    committed, so it is logged, not raised."""
    if settle is None:
        return
    try:
        settle(commit)
    except Exception as exc:
        get_logger(__name__).warning("store.settle_failed", path=str(path), error=str(exc))


def release_all() -> None:
    """Let go of every file this process holds.

    Takes every path's lock, so a release already under way in a timer thread (which
    took the hold out of the table first) has finished when this returns.
    """
    with _hub_lock:
        keys = list(_path_locks)
    for key in keys:
        release(Path(key))


def _at_exit() -> None:
    """Let go of every file at exit, so the files are whole. Timers that fire later find
    ``_closing`` set and leave DuckDB alone: a daemon thread still inside DuckDB when the
    interpreter finalizes aborts the process."""
    global _closing
    _closing = True
    release_all()



def _on_idle(path: Path) -> None:
    """Timer callback: let go of a held file once no commit came for :data:`LINGER`."""
    try:
        with path_lock(path):
            hold = _holds.get(str(path))
            if hold is None or _closing or hold.timer is not threading.current_thread():
                return  # let go already, exiting, or a timer of an earlier hold
            idle = time.monotonic() - hold.last
            if idle < LINGER and not someone_waits(path):
                _arm(path, hold, LINGER - idle)
                return
            del hold  # release() drops the last reference, under the lock
            release(path)
    except Exception as exc:  # a timer thread has no caller to raise to
        get_logger(__name__).warning("store.release_failed", path=str(path), error=str(exc))


def _arm(path: Path, hold: _Hold, after: float) -> None:
    timer = threading.Timer(after, _on_idle, args=(path,))
    timer.name = "nexus-audit-store-release"
    # A daemon, so a pending timer never delays exit; the exit hook lets go of the file
    # instead, and a timer thread never holds a DuckDB object outside the path lock (one
    # freed while the interpreter finalizes aborts the process).
    timer.daemon = True
    hold.timer = timer
    timer.start()


@contextlib.contextmanager
def reading(path: Path, *, timeout: float, clock: Clock,
            ) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
    """``(cursor, alias)`` with ``path`` attached read-only (or held by this process)."""
    with path_lock(path):
        hold = _holds.get(str(path))
        if hold is not None:
            cursor = hub_cursor()
            try:
                with interruptible(cursor):
                    yield cursor, hold.alias
            finally:
                cursor.close()
            return
        with _attached(path, read_only=True, timeout=timeout, clock=clock) as attached, \
                interruptible(attached[0]):
            yield attached


@contextlib.contextmanager
def _attached(path: Path, *, read_only: bool, timeout: float, clock: Clock,
              ) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
    """``(cursor, alias)`` attached for the block only; whatever the caller left open (a
    transaction, a ``USE``) is undone at the detach. Call under the path lock."""
    cursor, alias = _attach(path, read_only=read_only, timeout=timeout, clock=clock)
    try:
        yield cursor, alias
    finally:
        _detach(cursor, alias, settled=False)


@contextlib.contextmanager
def maintaining(path: Path, *, timeout: float, clock: Clock,
                ) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
    """``(cursor, alias)`` with ``path`` attached read-write, detached after (migrations).

    The caller may leave a transaction open or ``USE`` the alias; both are undone.
    """
    with path_lock(path):
        release(path)
        with _attached(path, read_only=False, timeout=timeout, clock=clock) as attached:
            yield attached


@contextlib.contextmanager
def committing(path: Path, *, timeout: float, clock: Clock,
               settle: Callable[[Commit], None] | None = None) -> Iterator[Commit]:
    """A :class:`Commit` with ``path`` attached read-write for one commit.

    The caller leaves no transaction open and never ``USE``s the alias. After a commit
    that continues a burst the file stays held (see the module docstring); after an
    error it is always let go, so a failed commit never leaves a broken attachment.
    ``settle`` runs before the file is let go after successful commits (once per burst):
    housekeeping that may wait until then, which must leave no transaction open.
    """
    key = str(path)
    with path_lock(path):
        hold = _holds.get(key)
        if hold is None:
            _yield_to_waiters(path)
            cursor, alias = _attach(path, read_only=False, timeout=timeout, clock=clock)
            memo: dict[Any, Any] = {}
        else:
            cursor, alias, memo = hold.cursor, hold.alias, hold.memo
        try:
            yield Commit(cursor, alias, memo)
        except BaseException:
            if hold is not None:
                release(path, settle=False)
            else:
                _detach(cursor, alias, settled=True)
            raise
        now = time.monotonic()
        burst = now - _last_commit.get(key, float("-inf")) < LINGER
        _last_commit[key] = now
        if hold is None:
            if not burst or someone_waits(path):
                _settle(settle, Commit(cursor, alias, memo), path)
                _detach(cursor, alias, settled=True)
                return
            hold = _holds[key] = _Hold(cursor, alias, since=now, last=now, memo=memo,
                                       settle=settle)
            _arm(path, hold, LINGER)
            return
        hold.last = now
        if now - hold.since >= MAX_HOLD or someone_waits(path):
            release(path)


def _yield_to_waiters(path: Path) -> None:
    """Give a process waiting for ``path`` its turn before attaching (bounded).

    Real time, whatever the store's clock: this waits for another process.
    """
    deadline = time.monotonic() + YIELD_AT_MOST
    while someone_waits(path) and time.monotonic() < deadline:
        time.sleep(0.01)
