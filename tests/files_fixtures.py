"""A DuckFiles of the test's own (nexus_audit.history.duckfile): a fake clock that moves
only when the test says, and timers that go off only when the test fires them.

With the clock standing still, every commit after the first comes "at once" and is part
of a burst, so the file stays held until the test lets go, moves the clock and fires the
idle check, or closes the DuckFiles (after the test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.history.duckfile import DuckFiles


@dataclass(eq=False)
class ManualTimer:
    """A timer that runs only when :meth:`ManualTimers.fire` says so."""

    after: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """Never run."""
        self.cancelled = True


class ManualTimers:
    """A ``start_timer`` for :class:`DuckFiles` that keeps the timers for the test."""

    def __init__(self) -> None:
        self.started: list[ManualTimer] = []

    def __call__(self, after: float, callback: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer(after, callback)
        self.started.append(timer)
        return timer

    @property
    def pending(self) -> list[ManualTimer]:
        """The timers started and neither fired nor cancelled."""
        return [t for t in self.started if not t.cancelled]

    def fire(self) -> int:
        """Run the pending timers now, in this thread (those they start wait for the next
        call); how many ran."""
        due = self.pending
        for timer in due:
            timer.cancelled = True  # a timer runs once
            timer.callback()
        return len(due)


@dataclass
class OwnFiles:
    """What the ``files`` fixture hands a test."""

    files: DuckFiles
    clock: FakeClock
    timers: ManualTimers


@pytest.fixture
def files() -> Iterator[OwnFiles]:
    """A DuckFiles on a fake clock and manual timers, closed after the test."""
    clock = FakeClock()
    timers = ManualTimers()
    made = DuckFiles(clock, start_timer=timers)
    yield OwnFiles(made, clock, timers)
    made.close()
