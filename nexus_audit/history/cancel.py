"""Cancelling a DuckDB read running in another thread: :class:`Cancel`, bound to the
reads of a block with :func:`cancellable` (the store's readers bind their connections
with :func:`interruptible`)."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Final

import duckdb

#: How often a cancelled read's connection is interrupted again: an interrupt that comes
#: between two queries is lost, so it is repeated until the read has ended.
INTERRUPT_EVERY: Final = 0.05


class Cancel:
    """Asks a read running in another thread to stop: interrupts the DuckDB connections
    bound to it (:func:`cancellable`), now and whichever are bound later.

    An interrupt reaches only a query that is running: :meth:`cancel` repeats it every
    :data:`INTERRUPT_EVERY` seconds (in a timer thread) until :meth:`finished` is called.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._finished = False
        self._connections: set[duckdb.DuckDBPyConnection] = set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled (or ``timeout`` seconds); whether it was cancelled."""
        return self._event.wait(timeout)

    def cancel(self) -> None:
        """Interrupt the bound connections, again and again until :meth:`finished`."""
        self._event.set()
        self._interrupt()

    def finished(self) -> None:
        """The read has ended (however): stop interrupting."""
        with self._lock:
            self._finished = True

    def _interrupt(self) -> None:
        with self._lock:
            if self._finished:
                return
            for connection in self._connections:
                with contextlib.suppress(duckdb.Error):
                    connection.interrupt()
            timer = threading.Timer(INTERRUPT_EVERY, self._interrupt)
            timer.name = "nexus-audit-interrupt"
            timer.daemon = True
            timer.start()

    @contextlib.contextmanager
    def bound(self, connection: duckdb.DuckDBPyConnection) -> Iterator[None]:
        """Interrupt ``connection`` on :meth:`cancel` while inside; refuses to start
        (``duckdb.InterruptException``) once cancelled."""
        with self._lock:
            if self._event.is_set():
                raise duckdb.InterruptException("INTERRUPT Error: the read was cancelled")
            self._connections.add(connection)
        try:
            yield
        finally:
            with self._lock:
                self._connections.discard(connection)


_cancel: contextvars.ContextVar[Cancel | None] = contextvars.ContextVar(
    "nexus_audit_cancel", default=None)


@contextlib.contextmanager
def cancellable(cancel: Cancel) -> Iterator[None]:
    """Reads started inside (in this thread or context) are interrupted by ``cancel``."""
    token = _cancel.set(cancel)
    try:
        yield
    finally:
        _cancel.reset(token)


@contextlib.contextmanager
def interruptible(cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Interrupt ``cursor`` while inside on the enclosing :func:`cancellable`'s cancel."""
    cancel = _cancel.get()
    if cancel is None:
        yield
        return
    with cancel.bound(cursor):
        yield
