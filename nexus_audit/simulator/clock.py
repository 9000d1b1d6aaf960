"""Time sources for the simulator: the wall clock and a manual clock for tests."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Anything with ``time()`` returning wall-clock seconds since the epoch."""

    def time(self) -> float:
        """Return the current wall time in seconds."""


class SystemClock:
    """The real wall clock (``time.time``)."""

    def time(self) -> float:
        """Return the current wall time in seconds."""
        return time.time()


class ManualClock:
    """A clock that only moves when told to, so tests drive windows without sleeping."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self._now = start
        # The thread-backed simulator reads the clock from its own thread.
        self._lock = threading.Lock()

    def time(self) -> float:
        """Return the current (manual) time in seconds."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("a manual clock only moves forward")
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        """Jump the clock to ``now``."""
        with self._lock:
            self._now = now
