"""The rate budget of one API key: a true sliding window plus the server's word.

One :class:`RateBudget` per key, shared by every concurrent crawl on that key. Two limits
apply at once and the stricter one wins:

* our own share: never more than ``capacity`` requests in any ``window`` seconds, in
  every window, not only aligned ones. A request occupies a slot from the moment it is
  sent until ``window`` seconds after its answer arrived: the server saw it somewhere in
  between, so however latency varies, no ``window`` seconds of the *server's* clock hold
  more than ``capacity`` of our requests (a slot freed ``window`` after the send could
  still collide with a slow request's late arrival);
* the server's headers: ``X-RateLimit-Remaining`` minus the requests still in flight is
  what we may still send before ``X-RateLimit-Reset``; at 0 we hold until the reset (plus
  a little jitter, so several clients on one key do not all fire at the same instant).
  Other tools may share the key, so the server's count is the truth.

The arithmetic (:meth:`RateBudget.delay`, :meth:`RateBudget.record_send`,
:meth:`RateBudget.observe`) takes the current time as a plain value; only
:meth:`RateBudget.acquire` reads the injected clock and sleeps on it.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from typing import Final

from nexus_audit.timeutil import Clock

#: Jitter added after a server-side reset: a share of the window, capped at one second.
RESET_JITTER_SHARE: Final = 0.02
RESET_JITTER_CAP: Final = 1.0


def window_capacity(per_minute: int, window: float) -> int:
    """Sends allowed per ``window`` seconds for a budget of ``per_minute`` (at least 1)."""
    return max(1, math.floor(per_minute * window / 60.0 + 1e-9))


class RateBudget:
    """At most ``per_minute`` requests per minute on one key, in every sliding window.

    ``window`` shortens the window for tests and benchmarks; the rate stays
    ``per_minute`` (``capacity = per_minute * window / 60`` sends per window).
    """

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Clock,
        window: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be >= 1")
        if window <= 0:
            raise ValueError("window must be > 0")
        self.per_minute = per_minute
        self.window = window
        self.capacity = window_capacity(per_minute, window)
        self._clock = clock
        self._rng = rng or random.Random()
        # Answer times of finished requests within the window, oldest first.
        self._finished: deque[float] = deque()
        self._hold_until = -math.inf
        self._inflight = 0
        # The server's view: requests we may still send before its reset.
        self._server_left: int | None = None
        self._server_reset_epoch: float | None = None
        self._server_reset_at = -math.inf  # monotonic, jitter included
        self._lock = asyncio.Lock()
        self._finish_event = asyncio.Event()
        #: The last limit the server reported (``X-RateLimit-Limit``), for display.
        self.server_limit: int | None = None
        #: Total seconds callers waited in :meth:`acquire`.
        self.waited = 0.0

    def __repr__(self) -> str:
        return f"RateBudget({self.per_minute}/min, window={self.window}s)"

    # -- pure arithmetic over a given monotonic ``now`` ---------------------------------

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        finished = self._finished
        while finished and finished[0] <= horizon:
            finished.popleft()
        if self._server_left is not None and now >= self._server_reset_at:
            # A new server window has begun: its budget is unknown until the next answer.
            self._server_left = None

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until one more request may be sent (0 if at once).

        ``math.inf`` when every slot is held by a request still in flight: the wait ends
        when one of them is answered (:meth:`record_done`).
        """
        self._prune(now)
        wait = self._hold_until - now
        excess = self._inflight + len(self._finished) - self.capacity + 1
        if excess > 0:
            if excess > len(self._finished):
                return math.inf
            wait = max(wait, self._finished[excess - 1] + self.window - now)
        if self._server_left is not None and self._server_left <= 0:
            wait = max(wait, self._server_reset_at - now)
        return max(0.0, wait)

    def record_send(self, now: float) -> None:
        """Count one request sent at ``now``; it holds a slot until :meth:`record_done`."""
        self._prune(now)
        self._inflight += 1
        if self._server_left is not None:
            self._server_left -= 1

    def record_done(self, now: float) -> None:
        """One request in flight was answered (or failed) at ``now``."""
        if self._inflight > 0:
            self._inflight -= 1
            self._finished.append(now)
            self._finish_event.set()

    def done(self) -> None:
        """:meth:`record_done` at the clock's current time."""
        self.record_done(self._clock.monotonic())

    def in_window(self, now: float) -> int:
        """Slots held now: requests in flight plus those answered in the last window."""
        self._prune(now)
        return self._inflight + len(self._finished)

    @property
    def inflight(self) -> int:
        """Requests sent and not yet answered."""
        return self._inflight

    @property
    def server_left(self) -> int | None:
        """What we may still send in the server's current window, if known."""
        return self._server_left

    def observe(
        self,
        limit: int | None,
        remaining: int | None,
        reset_epoch: float | None,
        *,
        now: float,
        now_epoch: float,
    ) -> None:
        """Take the server's ``X-RateLimit-*`` headers as truth.

        ``now`` is monotonic, ``now_epoch`` the wall clock in unix seconds (the reset is a
        wall time). Requests still in flight may not be in the server's count yet, so they
        are subtracted; within one server window the estimate only ever goes down, so an
        answer that arrives late (with an older, higher count) cannot raise it.
        """
        if limit is not None:
            self.server_limit = limit
        if remaining is None or reset_epoch is None:
            return
        until_reset = reset_epoch - now_epoch
        if until_reset <= 0:
            return  # that window is over already
        estimate = remaining - self._inflight
        same_window = (
            self._server_left is not None
            and self._server_reset_epoch is not None
            and abs(self._server_reset_epoch - reset_epoch) < 1e-6
        )
        if same_window:
            assert self._server_left is not None
            self._server_left = min(self._server_left, estimate)
            return
        if self._server_reset_epoch is not None and reset_epoch < self._server_reset_epoch:
            return  # a late answer from an earlier window
        self._server_left = estimate
        self._server_reset_epoch = reset_epoch
        jitter = self._rng.uniform(0.0, min(RESET_JITTER_CAP, RESET_JITTER_SHARE * self.window))
        self._server_reset_at = now + until_reset + jitter

    def hold(self, seconds: float, *, now: float) -> None:
        """Send nothing on this key for ``seconds`` (after a 429: every caller waits)."""
        self._hold_until = max(self._hold_until, now + max(0.0, seconds))

    # -- the one method that waits -------------------------------------------------------

    async def acquire(self) -> None:
        """Wait until a request may be sent, and count it as sent.

        Callers queue in arrival order (``asyncio.Lock`` is fair); each re-checks after
        sleeping, so a hold that arrived meanwhile is honoured.
        """
        async with self._lock:
            while (wait := self.delay(self._clock.monotonic())) > 0:
                if wait == math.inf:
                    self._finish_event.clear()
                    started = self._clock.monotonic()
                    await self._finish_event.wait()
                    self.waited += self._clock.monotonic() - started
                    continue
                self.waited += wait
                await self._clock.sleep(wait)
            self.record_send(self._clock.monotonic())

    def observe_headers(self, limit: int | None, remaining: int | None,
                        reset_epoch: float | None) -> None:
        """:meth:`observe` at the clock's current time."""
        self.observe(limit, remaining, reset_epoch, now=self._clock.monotonic(),
                     now_epoch=self._clock.now().timestamp())

    def hold_for(self, seconds: float) -> None:
        """:meth:`hold` from the clock's current time."""
        self.hold(seconds, now=self._clock.monotonic())

    def usage(self) -> float:
        """Share of the window's capacity used right now (0..1)."""
        return self.in_window(self._clock.monotonic()) / self.capacity
