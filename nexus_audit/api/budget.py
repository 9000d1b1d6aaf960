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

Priority: a key's budget is shared by slow, long crawls (every instance, page by page) and
short, urgent ones (the bucket poll that sees an exposure). ``reserve`` slots of each
window are kept for ``high``-priority requests: ``normal`` requests may hold at most
``capacity - reserve`` slots (and leave the server's count of what is left above the part
of the reserve not in use), ``high`` ones any slot up to the full ``capacity``. Each priority
queues in arrival order; a ``normal`` request never goes while a ``high`` one waits. So a
crawl that saturates its share leaves the reserve free for the polls, and together they
never exceed ``capacity``. :func:`reserve_for` sizes the reserve from the polls' interval
and pages. The priority of a request is that of the task sending it
(:func:`request_priority`, a context variable): it follows a crawl's concurrent page
chains without threading a parameter through the crawler and the client.

Waits the server asks for are capped (``max_wait``, the ``max_server_wait`` setting, by
default two windows): an ``X-RateLimit-Reset`` further away than that (in milliseconds by
mistake, or hours ahead) with nothing remaining makes :meth:`RateBudget.acquire` raise
:class:`~nexus_audit.errors.RateLimitedError` naming the headers, for every priority, rather
than wait; the key's state expires after the cap, so the next request tries again. Every
wait of :data:`LONG_WAIT` seconds or more is logged with its cause. A 429's own wait is
capped by the client the same way before it becomes a :meth:`RateBudget.hold`, so no
job's hold keeps another's requests (the bucket poll's) waiting longer than the cap.

The arithmetic (:meth:`RateBudget.delay`, :meth:`RateBudget.record_send`,
:meth:`RateBudget.observe`) takes the current time as a plain value; only
:meth:`RateBudget.acquire` reads the injected clock and sleeps on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Final, Literal

from nexus_audit.config import AccountConfig
from nexus_audit.domain.timeutil import Clock
from nexus_audit.errors import RateLimitedError
from nexus_audit.logs import get_logger

log = get_logger(__name__)

#: The default cap on a wait the server's headers ask for: two windows of a minute.
DEFAULT_MAX_WAIT: Final = 120.0
#: A wait at least this long is logged (with its cause).
LONG_WAIT: Final = 5.0

#: Jitter added after a server-side reset: a share of the window, capped at one second.
RESET_JITTER_SHARE: Final = 0.02
RESET_JITTER_CAP: Final = 1.0


#: The floor of requests one bucket poll is assumed to need (the list is one or two pages).
MIN_POLL_REQUESTS: Final = 2

Priority = Literal["normal", "high"]
PRIORITIES: Final[tuple[Priority, ...]] = ("normal", "high")
_PRIORITY: ContextVar[Priority] = ContextVar("nexus_audit_request_priority", default="normal")


def window_capacity(per_minute: int, window: float) -> int:
    """Sends allowed per ``window`` seconds for a budget of ``per_minute`` (at least 1)."""
    return max(1, math.floor(per_minute * window / 60.0 + 1e-9))


def reserve_for(requests_per_poll: int, interval: float, window: float) -> int:
    """Slots that polls of ``requests_per_poll`` every ``interval`` s hold in any window.

    A slot is held from the send until ``window`` seconds after the answer, so the slots
    of every poll started in the last ``window`` seconds (plus the one in progress) can be
    held at once: ``ceil(window / interval) + 1`` polls. At least :data:`MIN_POLL_REQUESTS`
    requests per poll are assumed.
    """
    if interval <= 0 or window <= 0:
        raise ValueError("interval and window must be > 0")
    polls = math.ceil(window / interval - 1e-9) + 1
    return max(MIN_POLL_REQUESTS, requests_per_poll) * polls


def current_priority() -> Priority:
    """The priority of requests sent by the current task (``normal`` unless set)."""
    return _PRIORITY.get()


@contextlib.contextmanager
def request_priority(priority: Priority) -> Iterator[None]:
    """Send this task's requests (and those of tasks it starts) at ``priority``."""
    token = _PRIORITY.set(priority)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


class RateBudget:
    """At most ``per_minute`` requests per minute on one key, in every sliding window.

    ``window`` shortens the window for tests and benchmarks; the rate stays
    ``per_minute`` (``capacity = per_minute * window / 60`` sends per window).
    ``reserve`` slots per window are kept for ``high``-priority requests (see the module
    docstring; :meth:`set_reserve` changes it later).
    """

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Clock,
        window: float = 60.0,
        rng: random.Random | None = None,
        reserve: int = 0,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be >= 1")
        if window <= 0:
            raise ValueError("window must be > 0")
        self.per_minute = per_minute
        self.window = window
        self.capacity = window_capacity(per_minute, window)
        if max_wait <= 0:
            raise ValueError("max_wait must be > 0")
        #: The longest wait the server's headers may impose (a 429's or a reset's).
        self.max_wait = max_wait
        #: Why the server's current reset is refused (too far away), if it is.
        self._refused: str | None = None
        self._clock = clock
        self._rng = rng or random.Random()
        # Per priority: answer times of finished requests within the window (oldest
        # first) and the number still in flight. Both hold slots.
        self._finished: dict[Priority, deque[float]] = {p: deque() for p in PRIORITIES}
        self._inflight_by: dict[Priority, int] = dict.fromkeys(PRIORITIES, 0)
        self._hold_until = -math.inf
        # The server's view: requests we may still send before its reset.
        self._server_left: int | None = None
        self._server_reset_epoch: float | None = None
        self._server_reset_at = -math.inf  # monotonic, jitter included
        self.reserve = 0
        self.set_reserve(reserve)
        # One FIFO queue per priority; a high request waiting stops normal ones.
        self._locks: dict[Priority, asyncio.Lock] = {"normal": asyncio.Lock(),
                                                     "high": asyncio.Lock()}
        self._high_waiting = 0
        # Set when a slot frees or a high request leaves its queue: waiters re-check.
        self._changed = asyncio.Event()
        #: The last limit the server reported (``X-RateLimit-Limit``), for display.
        self.server_limit: int | None = None
        #: Total seconds callers waited in :meth:`acquire`.
        self.waited = 0.0

    def __repr__(self) -> str:
        return (f"RateBudget({self.per_minute}/min, window={self.window}s, "
                f"reserve={self.reserve})")

    def set_reserve(self, slots: int) -> None:
        """Keep ``slots`` per window for high priority (at most ``capacity - 1``: normal
        requests always keep one slot, or a crawl of them could never finish)."""
        if slots < 0:
            raise ValueError("reserve must be >= 0")
        self.reserve = min(slots, self.capacity - 1)

    # -- pure arithmetic over a given monotonic ``now`` ---------------------------------

    def _prune(self, now: float) -> None:
        # ``t + window <= now``, the very sum _free_at() names as the moment a slot frees:
        # ``t <= now - window`` rounds differently and, one ulp off, kept a send in the
        # window at the moment delay() had said its slot was free.
        for finished in self._finished.values():
            while finished and finished[0] + self.window <= now:
                finished.popleft()
        if self._server_left is not None and now >= self._server_reset_at:
            # A new server window has begun: its budget is unknown until the next answer.
            self._server_left = None
            self._refused = None

    def _held(self, priority: Priority) -> int:
        return self._inflight_by[priority] + len(self._finished[priority])

    def _free_at(self, finished: Iterable[float], held: int, limit: int) -> float:
        """When ``held`` slots (``finished`` among them, oldest first) drop below ``limit``:
        ``-inf`` if they are below already, ``inf`` if only answers in flight can free one."""
        excess = held - limit + 1
        if excess <= 0:
            return -math.inf
        oldest = list(itertools.islice(finished, excess))
        if excess > len(oldest):
            return math.inf
        return oldest[-1] + self.window

    def delay(self, now: float, priority: Priority = "normal") -> float:
        """Seconds from ``now`` until one more request of ``priority`` may be sent (0 if
        at once).

        Every request needs a slot under ``capacity``; a normal one also needs its own
        priority's slots under ``capacity - reserve``, and leaves the server's count
        above the part of the reserve that high requests are not using. ``math.inf``
        when only a request still in flight can free the slot (:meth:`record_done`).
        """
        self._prune(now)
        wait = self._hold_until - now
        total = self._finished["normal"], self._finished["high"]
        free = self._free_at(heapq.merge(*total), self.in_window(now), self.capacity)
        keep = 0
        if priority == "normal":
            free = max(free, self._free_at(self._finished["normal"], self._held("normal"),
                                           self.capacity - self.reserve))
            keep = max(0, self.reserve - self._held("high"))
        if free == math.inf:
            return math.inf
        wait = max(wait, free - now)
        if self._server_left is not None and self._server_left <= keep:
            wait = max(wait, self._server_reset_at - now)
        return max(0.0, wait)

    def record_send(self, now: float, priority: Priority = "normal") -> None:
        """Count one request sent at ``now``; it holds a slot until :meth:`record_done`."""
        self._prune(now)
        self._inflight_by[priority] += 1
        if self._server_left is not None:
            self._server_left -= 1

    def record_done(self, now: float, priority: Priority = "normal") -> None:
        """One request of ``priority`` in flight was answered (or failed) at ``now``."""
        if self._inflight_by[priority] > 0:
            self._inflight_by[priority] -= 1
            self._finished[priority].append(now)
            self._changed.set()

    def done(self) -> None:
        """:meth:`record_done` at the clock's current time, at the task's priority."""
        self.record_done(self._clock.monotonic(), _PRIORITY.get())

    def in_window(self, now: float) -> int:
        """Slots held now: requests in flight plus those answered in the last window."""
        self._prune(now)
        return self._held("normal") + self._held("high")

    def next_slot(self, now: float) -> float | None:
        """While the budget binds, the monotonic time a normal request may go next (the
        window's next free slot, a hold after a 429 or the server's reset, whichever is
        last); ``math.inf`` while only an answer in flight can free a slot; None when a
        request may go at ``now``."""
        wait = self.delay(now)
        return None if wait <= 0 else now + wait

    @property
    def inflight(self) -> int:
        """Requests sent and not yet answered."""
        return sum(self._inflight_by.values())

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
        estimate = remaining - self.inflight
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
        self._refused = None
        if until_reset > self.max_wait:
            # Never believed past the cap: acquire refuses while this count stops a request,
            # and the state expires after the cap, so a later request asks the server again.
            self._refused = (f"CloudNexus said X-RateLimit-Remaining: {remaining} with "
                             f"X-RateLimit-Reset: {reset_epoch:.0f}, {until_reset:,.0f}s away, "
                             f"past the {self.max_wait:g}s cap on a wait the server asks "
                             "(max_server_wait); not waiting")
            until_reset = self.max_wait
            # Not kept as the window's reset either: a sane reset later (smaller than an
            # epoch in milliseconds) must not pass for a late answer from an older window.
            self._server_reset_epoch = None
        self._server_reset_at = now + until_reset + jitter

    def hold(self, seconds: float, *, now: float) -> None:
        """Send nothing on this key for ``seconds`` (after a 429: every caller waits), at
        most :attr:`max_wait` (the client refuses longer waits before they get here)."""
        self._hold_until = max(self._hold_until, now + min(self.max_wait, max(0.0, seconds)))

    def refusal(self, now: float, priority: Priority = "normal") -> str | None:
        """Why a request of ``priority`` may not wait for the server's reset (it is past
        :attr:`max_wait`), or None: it may be sent or wait within the cap."""
        self._prune(now)
        if self._refused is None or self._server_left is None:
            return None
        keep = max(0, self.reserve - self._held("high")) if priority == "normal" else 0
        return self._refused if self._server_left <= keep else None

    def _cause(self, now: float, wait: float) -> str:
        """What a wait of ``wait`` seconds from ``now`` is for (for the log)."""
        if self._hold_until - now >= wait - 1e-9:
            return "429"
        if self._server_left is not None and self._server_reset_at - now >= wait - 1e-9:
            return "server_reset"
        return "window"

    # -- the one method that waits -------------------------------------------------------

    async def acquire(self, priority: Priority | None = None) -> None:
        """Wait until a request may be sent, and count it as sent.

        ``priority`` defaults to the task's (:func:`request_priority`). Callers of one
        priority queue in arrival order (``asyncio.Lock`` is fair); a normal caller also
        waits while any high one does. Each re-checks after sleeping, so a hold or a
        high request that arrived meanwhile is honoured.
        """
        level = priority or _PRIORITY.get()
        async with self._locks[level]:
            if level == "high":
                self._high_waiting += 1
            try:
                while True:
                    now = self._clock.monotonic()
                    wait = (math.inf if level == "normal" and self._high_waiting
                            else self.delay(now, level))
                    if wait <= 0:
                        break
                    refused = self.refusal(now, level)
                    if refused is not None:
                        log.warning("budget.refused", priority=level, reason=refused)
                        raise RateLimitedError(refused, status=None)
                    if wait != math.inf and wait >= LONG_WAIT:
                        # A full window of our own is routine (info); the server's word is not.
                        cause = self._cause(now, wait)
                        (log.info if cause == "window" else log.warning)(
                            "budget.long_wait", priority=level, seconds=round(wait, 3),
                            cause=cause)
                    if wait == math.inf:
                        self._changed.clear()
                        await self._changed.wait()
                        self.waited += self._clock.monotonic() - now
                        continue
                    self.waited += wait
                    await self._clock.sleep(wait)
                self.record_send(now, level)
            finally:
                if level == "high":
                    self._high_waiting -= 1
                    self._changed.set()

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


def _key(account: AccountConfig) -> tuple[str, str]:
    """What makes two accounts share a budget: the same key at the same API."""
    return account.api_url.rstrip("/"), account.api_key.reveal()


def rates_in_force(accounts: Iterable[AccountConfig]) -> dict[str, int]:
    """Each account's requests per minute: accounts sharing a key (and API URL) share one
    budget, at the smallest of their configured rates."""
    chosen = list(accounts)
    by_key: dict[tuple[str, str], int] = {}
    for account in chosen:
        key = _key(account)
        by_key[key] = min(by_key.get(key, account.rate_budget), account.rate_budget)
    return {a.name: by_key[_key(a)] for a in chosen}


def shared_budgets(accounts: Iterable[AccountConfig], clock: Clock, *,
                   window: float = 60.0,
                   max_wait: float = DEFAULT_MAX_WAIT) -> dict[str, RateBudget]:
    """One :class:`RateBudget` per key (and API URL) at :func:`rates_in_force`, mapped from
    each account using it. ``window`` shortens the window for tests and benchmarks;
    ``max_wait`` caps a wait the server's headers ask for (``max_server_wait``)."""
    chosen = list(accounts)
    rates = rates_in_force(chosen)
    by_key: dict[tuple[str, str], RateBudget] = {}
    for account in chosen:
        by_key.setdefault(_key(account),
                          RateBudget(rates[account.name], clock=clock, window=window,
                                     max_wait=max_wait))
    return {a.name: by_key[_key(a)] for a in chosen}
