"""RateBudget priority: the reserve for bucket polls, high requests first, in virtual time."""

from __future__ import annotations

import asyncio
import contextvars
import heapq
from datetime import UTC, datetime, timedelta

import pytest

from nexus_audit.api.budget import (
    RateBudget,
    current_priority,
    request_priority,
    reserve_for,
)
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import RateLimitedError
from tests.test_budget import max_in_any_window


class VirtualClock:
    """Discrete-event time for several tasks at once: ``sleep`` parks the caller until
    :meth:`run` advances to its wake-up time (FakeClock adds every sleep up instead)."""

    def __init__(self) -> None:
        self.t = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def now(self) -> datetime:
        """Wall time: a fixed origin plus the virtual seconds."""
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.t)

    def monotonic(self) -> float:
        """The virtual seconds."""
        return self.t

    async def sleep(self, seconds: float) -> None:
        """Wake up ``seconds`` of virtual time from now."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.t + max(0.0, seconds), self._seq, future))
        self._seq += 1
        await future

    async def run(self, until: float) -> None:
        """Let every task run until all wait, then jump to the next timer; up to ``until``."""
        while True:
            for _ in range(50):  # settle: every task runs until it waits on a timer or event
                await asyncio.sleep(0)
            if not self._timers or self._timers[0][0] > until:
                return
            self.t, _, future = heapq.heappop(self._timers)
            future.set_result(None)


def test_reserve_covers_every_poll_whose_slots_a_window_can_hold() -> None:
    """Polls every I s hold their slots for a window after the answer: ceil(W/I)+1 polls."""
    assert reserve_for(2, 60.0, 60.0) == 4
    assert reserve_for(1, 60.0, 60.0) == 4  # the floor of two requests per poll
    assert reserve_for(3, 5.0, 60.0) == 3 * 13
    assert reserve_for(2, 7.0, 60.0) == 2 * 10
    with pytest.raises(ValueError, match="interval"):
        reserve_for(2, 0.0, 60.0)


def test_normal_requests_leave_the_reserve_free_and_high_ones_use_it() -> None:
    """Normal sends stop at capacity - reserve; high sends go on up to the capacity."""
    budget = RateBudget(10, clock=FakeClock(), reserve=3)
    for _ in range(7):
        assert budget.delay(0.0) == 0.0
        budget.record_send(0.0)
    assert budget.delay(0.0) == float("inf")
    assert budget.delay(0.0, "high") == 0.0
    for _ in range(3):
        budget.record_send(0.0)
    assert budget.delay(0.0, "high") == float("inf")
    for _ in range(10):
        budget.record_done(1.0)
    assert budget.delay(2.0, "high") == pytest.approx(59.0)
    assert budget.delay(2.0) == pytest.approx(59.0)


def test_server_count_keeps_the_reserve_too() -> None:
    """When the server says only the reserve is left, normal waits for its reset, high goes."""
    clock = FakeClock()
    budget = RateBudget(100, clock=clock, reserve=2)
    budget.observe(1000, 2, clock.now().timestamp() + 30, now=clock.monotonic(),
                   now_epoch=clock.now().timestamp())
    assert budget.delay(clock.monotonic()) >= 30.0
    assert budget.delay(clock.monotonic(), "high") == 0.0


def test_reserve_never_takes_the_last_slot() -> None:
    """A reserve as big as the capacity still leaves normal requests one slot."""
    budget = RateBudget(5, clock=FakeClock(), reserve=50)
    assert budget.reserve == 4
    with pytest.raises(ValueError, match="reserve"):
        budget.set_reserve(-1)


def test_priority_follows_the_task_and_its_children() -> None:
    """request_priority sets the priority of the task and of tasks started inside it."""
    assert current_priority() == "normal"
    with request_priority("high"):
        assert contextvars.copy_context().run(current_priority) == "high"
    assert current_priority() == "normal"


async def test_a_waiting_high_request_goes_before_earlier_normal_ones() -> None:
    """When a slot frees, a high request waiting gets it even if normal ones queued first."""
    clock = FakeClock()
    budget = RateBudget(2, clock=clock)
    await budget.acquire()
    await budget.acquire()  # both slots in flight
    order: list[str] = []

    async def one(priority: str) -> None:
        await budget.acquire("high" if priority == "high" else "normal")
        order.append(priority)

    normal = asyncio.create_task(one("normal"))
    await asyncio.sleep(0)
    high = asyncio.create_task(one("high"))
    await asyncio.sleep(0)
    budget.done()  # one slot is answered: it frees a window later
    await high
    assert order == ["high"]
    assert not normal.done()
    budget.done()
    await normal
    assert order == ["high", "normal"]


async def simulate(reserve: int, *, per_minute: int = 60, interval: float = 10.0,
                   latency: float = 0.2, chains: int = 4, polls_from: float = 30.0,
                   until: float = 600.0) -> tuple[list[float], list[float], int]:
    """An instance crawl (``chains`` page chains, endless) saturating a budget while bucket
    polls (two pages each, high priority) run every ``interval``; virtual time.

    Returns the send times of every request, each poll's delay (from its due time to its
    last answer), and the number of instance pages sent.
    """
    clock = VirtualClock()
    budget = RateBudget(per_minute, clock=clock, reserve=reserve)
    sends: list[float] = []
    delays: list[float] = []
    pages = 0

    async def request() -> None:
        await budget.acquire()
        sends.append(clock.t)
        await clock.sleep(latency)
        budget.done()

    async def chain() -> None:
        nonlocal pages
        while True:
            await request()
            pages += 1

    async def poller() -> None:
        with request_priority("high"):
            due = polls_from
            while True:
                await clock.sleep(due - clock.t)
                for _ in range(2):
                    await request()
                delays.append(clock.t - due)
                due += interval

    tasks = [asyncio.create_task(chain()) for _ in range(chains)]
    tasks.append(asyncio.create_task(poller()))
    try:
        await clock.run(until)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return sends, delays, pages


async def test_saturating_crawl_never_starves_polls_with_the_reserve() -> None:
    """With the reserve, every poll finishes within its two round trips while an instance
    crawl keeps the rest of the budget busy, and no 60 s window holds more than the budget."""
    sends, delays, pages = await simulate(reserve_for(2, 10.0, 60.0))
    assert len(delays) >= 55
    assert max(delays) <= 2 * 0.2 + 1e-6
    assert max_in_any_window(sends, 60.0) <= 60
    # The crawl still gets the budget minus the reserve (46 of 60 per window).
    assert pages >= 46 * 9


async def test_without_the_reserve_a_saturating_crawl_delays_polls() -> None:
    """The control: with no reserve, polls queue behind the crawl's window for many seconds."""
    _, delays, _ = await simulate(0)
    assert max(delays) > 10.0


async def test_a_crawls_server_wait_never_holds_the_poll_past_the_cap() -> None:
    """A normal crawl's 429 asking for hours holds the key at most ``max_wait``; a reset
    past the cap is refused (RATE_LIMITED, naming the header) for the high-priority poll
    at once instead of a wait, and the key is tried again once the cap has passed."""
    clock = FakeClock()
    budget = RateBudget(600, clock=clock, reserve=20, max_wait=120.0)
    with request_priority("normal"):
        budget.hold_for(3 * 3600.0)
    assert budget.delay(clock.monotonic(), "high") <= 120.0
    clock.advance(120.0)
    reset_ms = clock.now().timestamp() * 1000
    budget.observe_headers(1000, 0, reset_ms)
    start = clock.monotonic()
    with pytest.raises(RateLimitedError, match=f"X-RateLimit-Reset: {reset_ms:.0f}"):
        await budget.acquire("high")
    with pytest.raises(RateLimitedError):
        await budget.acquire("normal")
    assert clock.monotonic() == start  # refused, not waited
    clock.advance(121.0)
    await budget.acquire("high")  # the refused window expired: ask the server again
    assert budget.inflight == 1
    budget.observe_headers(1000, 7, clock.now().timestamp() + 30)  # a sane answer counts
    assert budget.server_left == 6
