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
header check runs only right before attaching, under the path lock (and a copy
opens the file before attaching it and closes it after detaching).

Long reads (``serve``'s reports) read a copy of the file, never the file, so no commit
waits for them (:mod:`nexus_audit.history.copies` tells why and how). A long read can be
cancelled (:mod:`nexus_audit.history.cancel`): its DuckDB connection is interrupted.
The steps that keep no state (attaching with retry, markers, the header check) are in
:mod:`nexus_audit.history.attach`.

**One object.** All of the above is the state of one :class:`DuckFiles`: the hub, the
per-path locks, the holds and their timers, when each file last had a commit, and the
copies (:class:`~nexus_audit.history.copies.Copies`). Its :class:`Clock`, given to its
constructor, decides what is a burst, when a hold is idle and when it has lasted
:data:`MAX_HOLD`, so tests drive those with a fake clock and never sleep. Waiting for
another process (retrying an attach, yielding to a marker) is real time whatever the
clock: it sleeps for real, and compares with file times another process wrote.

**One per process.** DuckDB's lock on a file belongs to the process (and the POSIX record
lock under it is lost when any descriptor closes): two hubs of one process attaching one
file would both get in, and a descriptor closed by one drops the other's lock. So every
user of a file in a process goes through one DuckFiles. How that is kept:

- :func:`process_files` is the process's own, made on first use with the system clock.
  The composition roots (the commands, ``serve``'s runtime, the report workers) hand it
  to their :class:`~nexus_audit.history.store.Store`, and a Store given none uses it, so
  library callers (a ``Store(path)`` handed to ``build_report``) share it too.
- A DuckFiles claims each file it uses until it is closed: another DuckFiles of the same
  process using that file meanwhile is refused with a :class:`StoreError` (nothing is
  attached) rather than let in. Tests make their own, with a fake clock, for their own
  files, and close it.
- A DuckFiles belongs to the process that made it. A forked child inherits its memory but
  neither its locks nor its timer threads: there it refuses all use, its exit hook does
  nothing, and the child's :func:`process_files` is a new one. ``serve``'s report workers
  are spawned, not forked (:mod:`nexus_audit.service.workers`): they start with nothing and
  make their own on their first Store, over the copies they are handed.

**Lifetime.** :meth:`DuckFiles.close` lets go of every held file (settled, checkpointed,
detached), drops the copies and closes the hub; after it the object refuses all use. At
exit the process that made it lets go of every held file and drops the idle copies, as
before there were objects, but leaves the hub open (a daemon thread may still be reading
through it); timers firing after that leave DuckDB alone.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

import duckdb

from nexus_audit.domain.timeutil import Clock, SystemClock
from nexus_audit.errors import StoreError
from nexus_audit.history import owned, spill
from nexus_audit.history.attach import attach, detach, someone_waits, yield_to_waiters
from nexus_audit.history.cancel import interruptible
from nexus_audit.history.copies import Copies
from nexus_audit.logs import get_logger

#: A commit finishing within this long of the previous one on the same file keeps it held;
#: a held file is let go once no commit came for this long.
LINGER: Final = 0.25
#: The longest a file stays held in one go (bounds the write-ahead log, and the time a
#: copy of the file alone lags the history).
MAX_HOLD: Final = 5.0


class Timer(Protocol):
    """A callback to run later (:data:`StartTimer`'s), which can be called off."""

    def cancel(self) -> None:
        """Do not run the callback (a callback already running finishes)."""


#: Runs a callback in ``after`` seconds: how a :class:`DuckFiles` looks again at a hold.
StartTimer = Callable[[float, Callable[[], None]], Timer]


def thread_timer(after: float, callback: Callable[[], None]) -> Timer:
    """``callback`` in a daemon thread in ``after`` seconds (the :data:`StartTimer` of
    production)."""
    timer = threading.Timer(after, callback)
    timer.name = "nexus-audit-store-release"
    # A daemon, so a pending timer never delays exit; the exit hook lets go of the file
    # instead.
    timer.daemon = True
    timer.start()
    return timer


class Commit(NamedTuple):
    """What :meth:`DuckFiles.committing` hands a committer."""

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
    #: Tells this hold's timers from those of an earlier hold of the same file. A number,
    #: so a timer keeps no reference to the cursor: it is freed under the path lock, never
    #: by a timer thread while the interpreter finalizes (which aborts the process).
    token: int
    timer: Timer | None = None


class DuckFiles:
    """This process's way to its DuckDB files (see the module docstring): one in-memory hub
    instance, a lock per file, the writer's holds between the commits of a burst, and the
    copies long reads go to (:attr:`copies`).

    ``clock`` (the system clock by default) decides bursts, idle holds and the longest
    hold; ``start_timer`` (:func:`thread_timer` by default) runs the idle check of a hold
    later, when the clock says it may be idle. Make one per process
    (:func:`process_files`) and share it: a second one that uses a file the first uses
    is refused. :meth:`close` ends it.
    """

    def __init__(self, clock: Clock | None = None, *,
                 start_timer: StartTimer = thread_timer) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._start_timer = start_timer
        #: The copies of files for long reads.
        self.copies = Copies(self)
        #: DuckDB's memory limit while a commit runs (spills go to a directory of ours).
        self.memory = spill.MemoryLimit(self.cursor)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._hub: duckdb.DuckDBPyConnection | None = None
        #: Where the hub spills (made with it; see :mod:`nexus_audit.history.spill`).
        self._spill: owned.OwnedDirectory | None = None
        self._path_locks: dict[str, threading.RLock] = {}
        self._holds: dict[str, _Hold] = {}
        #: When the last commit on each path finished (this clock's monotonic), to tell a
        #: burst.
        self._last_commit: dict[str, float] = {}
        self._tokens = count()
        #: Set at exit or close: timers no longer touch DuckDB (see :meth:`_at_exit`).
        self._closing = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<DuckFiles of process {self._pid}: {len(self._path_locks)} files>"

    # -- the hub, the locks, the lifetime ----------------------------------------------

    def _check_usable(self) -> None:
        """Refuse new work once closed, or in a forked child (see the module docstring)."""
        if self._closed:
            raise StoreError("the database files were closed (DuckFiles.close); "
                             "nothing more can be read or written through them")
        self._check_process()

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise StoreError(f"these database files belong to process {self._pid}, not this "
                             "forked one: use process_files() in the child")

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A fresh connection (cursor) on the hub instance.

        One long-lived instance: attaching a file to it costs about a millisecond,
        starting an instance twenty.
        """
        self._check_usable()
        with self._lock:
            if self._hub is None:
                self._spill = spill.directory()  # None: no spilling
                where = "" if self._spill is None else str(self._spill.path)
                hub = duckdb.connect(":memory:", config={"temp_directory": where})
                # Global, so every cursor starts with it (a SET per cursor costs a statement).
                hub.execute("SET GLOBAL TimeZone = 'UTC'")
                self._hub = hub
                # Registered after the hub exists, so it runs before any exit hook the
                # duckdb module registers on its first connection (atexit runs hooks
                # last-in first).
                atexit.register(self._at_exit)
            return self._hub.cursor()

    def path_lock(self, path: Path) -> threading.RLock:
        """The lock that serializes this process's use of the file at ``path``; the first
        call for a path claims it for this DuckFiles (:func:`_claim`)."""
        self._check_process()  # a child's copy of a hold is not the child's to touch
        key = str(path)
        with self._lock:
            lock = self._path_locks.get(key)
            if lock is None:
                _claim(key, self)
                lock = self._path_locks[key] = threading.RLock()
            return lock

    def holding(self, path: Path) -> bool:
        """Whether ``path`` is held attached between commits right now."""
        return str(path) in self._holds

    def release(self, path: Path, *, settle: bool = True) -> None:
        """Let go of ``path`` if held: settle, checkpoint and detach.

        ``settle=False`` skips the committer's last step (after a failed commit).
        """
        with self.path_lock(path):
            hold = self._holds.pop(str(path), None)
            if hold is None:
                return
            if hold.timer is not None:
                hold.timer.cancel()
            if settle:
                _settle(hold.settle, Commit(hold.cursor, hold.alias, hold.memo), path)
            detach(hold.cursor, hold.alias, settled=True)
            # The cursor object goes here, under the lock, not when this frame is cleared.
            del hold

    def release_all(self) -> None:
        """Let go of every held file.

        Takes every path's lock, so a release already under way in a timer thread (which
        took the hold out of the table first) has finished when this returns.
        """
        with self._lock:
            keys = list(self._path_locks)
        for key in keys:
            self.release(Path(key))

    def close(self) -> None:
        """Let go of every held file, drop the copies, close the hub, give up the claims
        on the files; after this the object refuses all use. Idempotent."""
        if self._closed or os.getpid() != self._pid:
            return
        self._shut()
        atexit.unregister(self._at_exit)
        with self._lock:
            self._closed = True
            hub, self._hub = self._hub, None
            keys = list(self._path_locks)
        if hub is not None:
            with contextlib.suppress(duckdb.Error):
                hub.close()
        _unclaim(keys, self)

    def _shut(self) -> None:
        self._closing = True
        self.copies.drop()
        self.release_all()
        if self._spill is not None:
            # With DuckDB's files in it: no commit runs any more, and DuckDB, closing
            # later, finds them gone without complaint (its descriptors stay valid).
            self._spill.release(contents=True)

    def _at_exit(self) -> None:
        """Let go of every file at exit, so the files are whole. Timers that fire later
        find ``_closing`` set and leave DuckDB alone: a daemon thread still inside DuckDB
        when the interpreter finalizes aborts the process. Nothing in a forked child."""
        if os.getpid() == self._pid:
            self._shut()

    # -- holds -------------------------------------------------------------------------

    def _on_idle(self, path: Path, token: int) -> None:
        """Timer callback: let go of a held file once no commit came for :data:`LINGER`
        (by :attr:`clock`), or another process waits; else look again when it would be."""
        try:
            if self._closing:
                return
            with self.path_lock(path):
                hold = self._holds.get(str(path))
                if hold is None or self._closing or hold.token != token:
                    return  # let go already, exiting, or a timer of an earlier hold
                idle = self.clock.monotonic() - hold.last
                if idle < LINGER and not someone_waits(path):
                    self._arm(path, hold, LINGER - idle)
                    return
                del hold  # release() drops the last reference, under the lock
                self.release(path)
        except Exception as exc:  # a timer thread has no caller to raise to
            get_logger(__name__).warning("store.release_failed", path=str(path),
                                         error=str(exc))

    def _arm(self, path: Path, hold: _Hold, after: float) -> None:
        """Look at ``hold`` again in ``after`` seconds (one timer per hold at a time)."""
        if hold.timer is not None:
            hold.timer.cancel()  # a no-op from the timer's own callback
        hold.timer = self._start_timer(after, functools.partial(self._on_idle, path,
                                                                hold.token))

    # -- reading, maintaining, committing ------------------------------------------------

    @contextlib.contextmanager
    def attached(self, path: Path, *, read_only: bool, timeout: float,
                 ) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
        """``(cursor, alias)`` attached for the block only; whatever the caller left open
        (a transaction, a ``USE``) is undone at the detach. Call under the path lock,
        while ``path`` is not held."""
        cursor, alias = self._attach(path, read_only=read_only, timeout=timeout)
        try:
            yield cursor, alias
        finally:
            detach(cursor, alias, settled=False)

    def _attach(self, path: Path, *, read_only: bool,
                timeout: float) -> tuple[duckdb.DuckDBPyConnection, str]:
        cursor = self.cursor()
        try:
            return cursor, attach(cursor, path, read_only=read_only, timeout=timeout)
        except BaseException:
            cursor.close()
            raise

    @contextlib.contextmanager
    def reading(self, path: Path, *, timeout: float,
                ) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
        """``(cursor, alias)`` with ``path`` attached read-only (or held by this process)."""
        self._check_usable()
        with self.path_lock(path):
            hold = self._holds.get(str(path))
            if hold is not None:
                cursor = self.cursor()
                try:
                    with interruptible(cursor):
                        yield cursor, hold.alias
                finally:
                    cursor.close()
                return
            with self.attached(path, read_only=True, timeout=timeout) as attached, \
                    interruptible(attached[0]):
                yield attached

    @contextlib.contextmanager
    def maintaining(self, path: Path, *, timeout: float,
                    ) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
        """``(cursor, alias)`` with ``path`` attached read-write, detached after
        (migrations). The caller may leave a transaction open or ``USE`` the alias; both
        are undone."""
        self._check_usable()
        with self.path_lock(path):
            self.release(path)
            with self.attached(path, read_only=False, timeout=timeout) as attached:
                yield attached

    @contextlib.contextmanager
    def committing(self, path: Path, *, timeout: float,
                   settle: Callable[[Commit], None] | None = None) -> Iterator[Commit]:
        """A :class:`Commit` with ``path`` attached read-write for one commit.

        The caller leaves no transaction open and never ``USE``s the alias. After a
        commit that continues a burst the file stays held (see the module docstring);
        after an error it is always let go, so a failed commit never leaves a broken
        attachment. ``settle`` runs before the file is let go after successful commits
        (once per burst): housekeeping that may wait until then, which must leave no
        transaction open.
        """
        self._check_usable()
        key = str(path)
        with self.path_lock(path):
            hold = self._holds.get(key)
            if hold is None:
                yield_to_waiters(path)
                cursor, alias = self._attach(path, read_only=False, timeout=timeout)
                memo: dict[Any, Any] = {}
            else:
                cursor, alias, memo = hold.cursor, hold.alias, hold.memo
            try:
                yield Commit(cursor, alias, memo)
            except BaseException:
                if hold is not None:
                    self.release(path, settle=False)
                else:
                    detach(cursor, alias, settled=True)
                raise
            now = self.clock.monotonic()
            burst = now - self._last_commit.get(key, float("-inf")) < LINGER
            self._last_commit[key] = now
            if hold is None:
                if not burst or someone_waits(path):
                    _settle(settle, Commit(cursor, alias, memo), path)
                    detach(cursor, alias, settled=True)
                    return
                hold = self._holds[key] = _Hold(cursor, alias, since=now, last=now,
                                                memo=memo, settle=settle,
                                                token=next(self._tokens))
                self._arm(path, hold, LINGER)
                return
            hold.last = now
            if now - hold.since >= MAX_HOLD or someone_waits(path):
                self.release(path)


def _settle(settle: Callable[[Commit], None] | None, commit: Commit, path: Path) -> None:
    """Run the committer's last step before letting go; a failure there loses nothing
    committed, so it is logged, not raised."""
    if settle is None:
        return
    try:
        settle(commit)
    except Exception as exc:
        get_logger(__name__).warning("store.settle_failed", path=str(path), error=str(exc))


# -- one per process -----------------------------------------------------------------------
# The only state kept outside a DuckFiles, because what it guards belongs to the process:
# its own DuckFiles, and which DuckFiles uses each file (see "One per process" above).

_process_lock = threading.Lock()
_process: DuckFiles | None = None
_claims: dict[str, weakref.ref[DuckFiles]] = {}


def process_files() -> DuckFiles:
    """This process's :class:`DuckFiles`, made on first use with the system clock (anew
    after a close, and in a forked child); its exit hook lets go of its files."""
    global _process
    with _process_lock:
        if _process is None or _process._closed:
            _process = DuckFiles()
        return _process


def _claim(key: str, files: DuckFiles) -> None:
    """Record that ``files`` uses the file ``key``; refuse if another live DuckFiles of
    this process does."""
    with _process_lock:
        owner = _claims.get(key)
        holder = owner() if owner is not None else None
        if holder is not None and holder is not files:
            raise StoreError(f"{key} is already used through another DuckFiles of this "
                             "process; one process must reach a file through one (share "
                             "it, or close the other first)")
        _claims[key] = weakref.ref(files)


def _unclaim(keys: list[str], files: DuckFiles) -> None:
    with _process_lock:
        for key in keys:
            owner = _claims.get(key)
            if owner is not None and owner() in (files, None):
                del _claims[key]


def _forget_in_child() -> None:
    """After a fork, in the child: the parent's DuckFiles and claims are not the child's."""
    global _process, _process_lock
    _process_lock = threading.Lock()  # possibly taken by another thread at the fork
    _process = None
    _claims.clear()


os.register_at_fork(after_in_child=_forget_in_child)
