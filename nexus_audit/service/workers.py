"""Report work in processes of its own, so it never holds the ``serve`` process's GIL.

A report over a long history is mostly Python holding the GIL: DuckDB hands over rows as
Python objects (one C call per result), the report folds them into dataclasses, and the
JSON encoder writes megabytes in one C call. In a thread of ``serve`` that starved the
event loop: with 20 clients asking for 60-day reports, every step of the loop (a scrape,
a bucket poll's request) waited 100-400 ms for the GIL, and bucket polls missed their
turns. Measured with the load benchmark (``bench/load.py --mode distinct``): report
threads alone, even one at a time and with a shorter switch interval, kept ``/metrics``
p99 at 150-550 ms.

So ``serve`` computes each report in a worker process (one per report slot, started on
first use, at a lower CPU priority: reports are the work that may wait) reading a copy of
the database (:meth:`nexus_audit.history.copies.Copies.holding_copy`); the service's
thread only waits for the bytes. A job is a module-level function and its arguments (so a
spawned worker can import it; the jobs here import no more than the report needs), run
inside :func:`nexus_audit.history.cancel.cancellable`: cancelling the job interrupts its
DuckDB query in the worker; a worker that does not come back within :data:`KILL_AFTER` of
a cancel, or dies, is killed and replaced by the next job.

A worker is spawned, not forked, so it inherits nothing of serve's DuckDB state (its hub,
held files, copies): a job opens the copy it is handed through the worker's own
:func:`~nexus_audit.history.duckfile.process_files`, made on the first job.

Our errors come back as themselves (``NoDataError``, ``StoreError``, ``UsageError``: their
message, not their traceback); anything else as :class:`WorkerError`.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from typing import Any, Final

from nexus_audit.audit.report import build_report
from nexus_audit.audit.stale import StreakCount, current_streak_counts
from nexus_audit.domain.policy import Policy
from nexus_audit.domain.pricing import Pricing
from nexus_audit.domain.timeutil import Window
from nexus_audit.errors import NexusAuditError, NoDataError, StoreError, UsageError
from nexus_audit.history.cancel import Cancel, cancellable
from nexus_audit.history.duckfile import process_files
from nexus_audit.history.protocol import History
from nexus_audit.history.store import Store
from nexus_audit.logs import get_logger
from nexus_audit.output.html_report import render_html

log = get_logger(__name__)

#: How much lower a worker's CPU priority is than serve's (``nice``): the crawls, bucket
#: polls and scrapes come first on a busy machine.
NICENESS: Final = 10
#: How long serve's shutdown waits for its idle workers to end on their own.
STOP_AFTER: Final = 2.0
#: What a worker ignores: a terminal's Ctrl-C and hangup reach every process of serve's
#: group, and so does a process manager's stop (systemd's control group, ``docker stop``,
#: ``kill -TERM`` of the group), and serve alone decides when its workers stop: it drains
#: its crawls, then closes their pipes (a worker killed by the stop failed serve's
#: start-up rebuild with a traceback, or a /report in flight).
HELD_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGHUP, signal.SIGTERM})
#: Seconds a worker may take to stop after a cancel before it is killed.
KILL_AFTER: Final = 10.0
#: How often the waiting thread looks whether its job was cancelled.
_POLL: Final = 0.05

Job = Callable[..., bytes]


class WorkerError(Exception):
    """A report worker failed (a bug, or the process died)."""


# -- the jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportArgs:
    """What :func:`build_report` needs besides the history (picklable: it goes to a
    report worker process)."""

    window: Window
    accounts: tuple[str, ...]
    stale_after: timedelta
    pending_stale_after: timedelta
    max_gap_instances: timedelta
    max_gap_buckets: timedelta
    pricing: Pricing
    now: datetime
    policy: Policy | None


def _copy_store(copy: str) -> Store:
    """The copy at ``copy`` as a store, read through this (worker) process's DuckFiles."""
    return Store(copy, files=process_files())


def report_dict(history: History, args: ReportArgs) -> Mapping[str, Any]:
    """The report JSON (as a dict) over ``history``."""
    report = build_report(
        history, args.window, accounts=args.accounts, stale_after=args.stale_after,
        pending_stale_after=args.pending_stale_after,
        max_gap_instances=args.max_gap_instances, max_gap_buckets=args.max_gap_buckets,
        pricing=args.pricing, now=args.now, policy=args.policy)
    data: Mapping[str, Any] = report.to_json_dict()
    return data


def report_json(copy: str, args: ReportArgs) -> bytes:
    """A report worker's job: the report JSON, encoded, over the database copy at ``copy``."""
    return json.dumps(report_dict(_copy_store(copy), args)).encode()


def report_page(history: History, args: ReportArgs) -> bytes:
    """The HTML report (with its daily series) over ``history``, UTF-8."""
    report = build_report(
        history, args.window, accounts=args.accounts, stale_after=args.stale_after,
        pending_stale_after=args.pending_stale_after,
        max_gap_instances=args.max_gap_instances, max_gap_buckets=args.max_gap_buckets,
        pricing=args.pricing, now=args.now, policy=args.policy, series=True)
    return render_html(report).encode("utf-8")


def report_html(copy: str, args: ReportArgs) -> bytes:
    """A report worker's job: the HTML report over the database copy at ``copy``."""
    return report_page(_copy_store(copy), args)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreakArgs:
    """What :func:`current_streak_counts` needs besides the history (picklable)."""

    accounts: tuple[str, ...]
    since: datetime
    until: datetime
    max_gap_instances: timedelta
    max_gap_buckets: timedelta
    pricing: Pricing


def streak_counts_json(copy: str, args: StreakArgs) -> bytes:
    """A worker's job: :func:`current_streak_counts` over the copy at ``copy``, as JSON."""
    counts = current_streak_counts(
        _copy_store(copy), args.accounts, since=args.since, until=args.until,
        max_gap_instances=args.max_gap_instances, max_gap_buckets=args.max_gap_buckets,
        pricing=args.pricing)
    return json.dumps([[c.account, c.status, c.since.isoformat(), c.number]
                       for c in counts]).encode()


def streak_counts_from_json(body: bytes) -> list[StreakCount]:
    """The counts :func:`streak_counts_json` encoded."""
    return [StreakCount(account=a, status=status, since=datetime.fromisoformat(since),
                        number=int(n))
            for a, status, since, n in json.loads(body)]


# -- in the worker process ------------------------------------------------------------------


def _run(conn: Connection, send_lock: threading.Lock, job: Job, args: tuple[Any, ...],
         cancel: Cancel) -> None:
    try:
        with cancellable(cancel):
            reply: tuple[Any, ...] = ("ok", job(*args))
    except UsageError as exc:
        reply = ("usage", str(exc), exc.parameter)
    except NoDataError as exc:
        reply = ("nodata", str(exc))
    except StoreError as exc:
        reply = ("store", str(exc))
    except NexusAuditError as exc:
        reply = ("store", str(exc))
    except Exception as exc:
        reply = ("error", f"{type(exc).__name__}: {exc}")
    finally:
        cancel.finished()
    with send_lock:
        conn.send(reply)


def _serve(conn: Connection, niceness: int) -> None:
    """A worker's main loop: run each job in a thread, while listening for its cancel."""
    # A terminal's Ctrl-C reaches every process of its group, the workers too: serve alone
    # decides when they stop (it closes their pipes), and a worker interrupted in recv()
    # printed a KeyboardInterrupt traceback over serve's log. A hangup reaches them too
    # (SIGHUP's default ends a process): serve's reload would fail on a dead worker. So
    # does a stop of the whole group (SIGTERM): serve stops them once it has drained.
    for held in HELD_SIGNALS:
        signal.signal(held, signal.SIG_IGN)
    # Held back since serve spawned this process (see _Worker): one that came meanwhile
    # is dropped now, ignored, instead of ending the worker during its start-up.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
    if niceness:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    send_lock = threading.Lock()
    current: Cancel | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # serve is gone
        if message[0] == "job":
            current = Cancel()
            threading.Thread(target=_run, args=(conn, send_lock, message[1], message[2],
                                                current), daemon=True).start()
        elif message[0] == "cancel" and current is not None:
            current.cancel()


# -- in serve -------------------------------------------------------------------------------


class _Worker:
    """One worker process and serve's end of its pipe."""

    def __init__(self, niceness: int) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, niceness), daemon=True,
                                       name="nexus-audit-report-worker")
        # The child inherits this thread's signal mask: with these held back until it
        # ignores them, a Ctrl-C or hangup during its start-up (the imports take a
        # second) cannot end it either.
        before = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        try:
            # multiprocessing's resource tracker, started (once) on the first spawn,
            # unblocks SIGINT after starting: start it first (with a hangup held back for
            # it too), then hold them back again for the worker.
            resource_tracker.ensure_running()
            signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
        child.close()

    def kill(self) -> None:
        """Kill the process (by its own handle) and close the pipe."""
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
            self.process.join(5)
        with contextlib.suppress(OSError):
            self.conn.close()


class ReportWorkers:
    """Runs jobs in worker processes, one job per worker at a time.

    :meth:`run` blocks (call it in a thread); at most as many run at once as threads call
    it (``serve`` calls it from its report slots' threads). Workers run ``niceness``
    lower in CPU priority than serve (:data:`NICENESS` by default; 0 for work serve waits
    for, like its snapshot rebuild).
    """

    def __init__(self, *, niceness: int = NICENESS) -> None:
        self._niceness = niceness
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._closed = False

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise WorkerError("the report workers are shut down")
            if self._idle:
                return self._idle.pop()
        worker = _Worker(self._niceness)
        with self._lock:
            self._all.add(worker)
        return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
        self._discard(worker)

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            self._all.discard(worker)
        worker.kill()

    def run(self, job: Job, args: tuple[Any, ...], cancel: Cancel) -> bytes:
        """``job(*args)`` in a worker; cancelling ``cancel`` interrupts it there."""
        worker = self._take()
        try:
            worker.conn.send(("job", job, args))
            cancelled_at: float | None = None
            while not worker.conn.poll(_POLL):
                if not worker.process.is_alive():
                    raise WorkerError("the report worker died")
                if cancel.cancelled:
                    if cancelled_at is None:
                        cancelled_at = time.monotonic()
                        worker.conn.send(("cancel",))
                    elif time.monotonic() - cancelled_at > KILL_AFTER:
                        raise WorkerError(f"the report worker did not stop within "
                                          f"{KILL_AFTER:g}s of a cancel")
            reply = worker.conn.recv()
        except (WorkerError, EOFError, OSError) as exc:
            self._discard(worker)
            if isinstance(exc, WorkerError):
                raise
            raise WorkerError(f"the report worker failed: {exc}") from None
        except BaseException:
            self._discard(worker)
            raise
        self._give_back(worker)
        kind = reply[0]
        if kind == "ok":
            body: bytes = reply[1]
            return body
        if kind == "usage":
            raise UsageError(reply[1], parameter=reply[2])
        if kind == "nodata":
            raise NoDataError(reply[1])
        if kind == "store":
            raise StoreError(reply[1])
        raise WorkerError(reply[1])

    def close(self) -> None:
        """Stop every worker: an idle one ends on its own once its pipe closes, so it
        cleans up after itself (its DuckDB spill directory), within :data:`STOP_AFTER`;
        one still running a job, or slower than that, is killed."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
            idle = list(self._idle)
            self._all.clear()
            self._idle.clear()
        for worker in idle:
            with contextlib.suppress(OSError):
                worker.conn.close()  # its recv() ends: it returns and exits
        deadline = time.monotonic() + STOP_AFTER
        for worker in idle:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            worker.kill()  # no signal to one that exited (its exit code is known)
