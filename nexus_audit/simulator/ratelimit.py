"""Per-key fixed-window rate limiting, as pure arithmetic over a given ``now``."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of one request against a key's window, with the header values."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # unix seconds at which the current window ends (X-RateLimit-Reset)
    retry_after: int  # whole seconds until the window ends, at least 1

    def headers(self) -> dict[str, str]:
        """The ``X-RateLimit-*`` headers for this decision."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }


class FixedWindowLimiter:
    """``limit`` requests per ``window`` seconds per key; windows align to the epoch.

    Rejected requests do not consume quota.
    """

    def __init__(self, limit: int, window: float) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._used: dict[str, tuple[int, int]] = {}  # key id -> (window index, count)
        self._lock = threading.Lock()

    def acquire(self, key_id: str, now: float) -> RateDecision:
        """Count one request for ``key_id`` if the window has room."""
        with self._lock:
            index, count = self._current(key_id, now)
            allowed = count < self.limit
            if allowed:
                count += 1
                self._used[key_id] = (index, count)
            return self._decision(allowed, index, count, now)

    def peek(self, key_id: str, now: float) -> RateDecision:
        """The current state for ``key_id`` without counting a request."""
        with self._lock:
            index, count = self._current(key_id, now)
            return self._decision(True, index, count, now)

    def _current(self, key_id: str, now: float) -> tuple[int, int]:
        index = math.floor(now / self.window)
        used_index, count = self._used.get(key_id, (index, 0))
        return (index, count) if used_index == index else (index, 0)

    def _decision(self, allowed: bool, index: int, count: int, now: float) -> RateDecision:
        end = (index + 1) * self.window
        return RateDecision(
            allowed=allowed,
            limit=self.limit,
            remaining=max(0, self.limit - count),
            reset_at=math.ceil(end),
            retry_after=max(1, math.ceil(end - now)),
        )
