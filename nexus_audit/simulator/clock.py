"""Time for the simulator: the exporter's one :class:`~nexus_audit.domain.timeutil.Clock`.

The simulator reads wall time as unix seconds (:func:`wall_seconds`) from any such clock:
the real one (:class:`~nexus_audit.domain.timeutil.SystemClock`), or :class:`ManualClock`,
which moves only when a test tells it to and can be read from the simulator's own thread.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

from nexus_audit.domain.timeutil import Clock, SystemClock

__all__ = ["Clock", "ManualClock", "SystemClock", "wall_seconds"]


def wall_seconds(clock: Clock) -> float:
    """The clock's wall time in seconds since the epoch (what the API's headers carry)."""
    return clock.now().timestamp()


class ManualClock:
    """A clock that only moves when told to, so tests drive windows without sleeping."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self._now = start
        # The thread-backed simulator reads the clock from its own thread.
        self._lock = threading.Lock()

    def time(self) -> float:
        """The current (manual) time in seconds since the epoch."""
        with self._lock:
            return self._now

    def now(self) -> datetime:
        """The current (manual) wall time, timezone-aware UTC."""
        return datetime.fromtimestamp(self.time(), UTC)

    def monotonic(self) -> float:
        """The same seconds: a manual clock never goes back."""
        return self.time()

    async def sleep(self, seconds: float) -> None:
        """Advance by ``seconds`` at once and yield to the loop."""
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

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
