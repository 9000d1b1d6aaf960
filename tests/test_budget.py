"""RateBudget: the sliding window, the server's headers, holds; pure arithmetic and FakeClock."""

from __future__ import annotations

import asyncio
import random
from bisect import bisect_right

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus_audit.api.budget import RateBudget, window_capacity
from nexus_audit.domain.timeutil import FakeClock


def max_in_any_window(times: list[float], window: float) -> int:
    """The most sends inside any half-open window ``[t, t + window)``."""
    ordered = sorted(times)
    return max(
        (bisect_right(ordered, t + window - 1e-9) - i for i, t in enumerate(ordered)), default=0
    )


def test_capacity_scales_the_rate_to_the_window() -> None:
    """A per-minute budget becomes per-window capacity; never below one."""
    assert window_capacity(250, 60.0) == 250
    assert window_capacity(6000, 1.0) == 100
    assert window_capacity(10, 1.0) == 1


def drive(budget: RateBudget, requests: list[tuple[float, float, float]]) -> list[float]:
    """Send requests through ``budget`` in simulated time; the server-side arrival times.

    Each request is ``(gap after the previous one was wanted, latency, where in the
    round trip the server sees it: 0..1)``. Answers are processed in time order.
    """
    import heapq

    now = 0.0
    answers: list[float] = []
    arrivals: list[float] = []

    def answer_until(moment: float) -> None:
        while answers and answers[0] <= moment:
            budget.record_done(heapq.heappop(answers))

    for gap, latency, seen_at in requests:
        now += gap
        answer_until(now)
        while (wait := budget.delay(now)) > 0:
            now = answers[0] if wait == float("inf") else now + wait
            answer_until(now)
        budget.record_send(now)
        heapq.heappush(answers, now + latency)
        arrivals.append(now + seen_at * latency)
    return arrivals


@settings(max_examples=150, deadline=None)
@given(
    per_minute=st.integers(min_value=1, max_value=40),
    requests=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=20.0),
                  st.floats(min_value=0.0, max_value=30.0),
                  st.floats(min_value=0.0, max_value=1.0)),
        min_size=1, max_size=200),
)
def test_never_more_than_capacity_in_any_window(per_minute: int,
                                                requests: list[tuple[float, float, float]]
                                                ) -> None:
    """Whatever the arrivals and latencies, the server never sees more than the budget
    in any sliding 60 s window."""
    arrivals = drive(RateBudget(per_minute, clock=FakeClock()), requests)
    assert max_in_any_window(arrivals, 60.0) <= per_minute


@settings(max_examples=60, deadline=None)
@given(
    per_minute=st.integers(min_value=1, max_value=30),
    gaps=st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=1, max_size=120),
)
@example(per_minute=2, gaps=[1.7657429007305385, 0.0, 0.0, 0.0])  # one ulp at the boundary
def test_instant_answers_use_the_whole_budget(per_minute: int, gaps: list[float]) -> None:
    """With instant answers a send waits exactly until the oldest in the window expires,
    and goes at once (no wait) whenever the last window holds fewer than the budget."""
    budget = RateBudget(per_minute, clock=FakeClock())
    now = 0.0
    sent: list[float] = []
    for gap in gaps:
        now += gap
        wait = budget.delay(now)
        # A send holds its slot until t + 60 (the same sum as the budget's, to the ulp).
        in_window = [t for t in sent if t + 60.0 > now]
        if len(in_window) < per_minute:
            assert wait == 0.0, (now, in_window)  # a free slot: no wait at all
        else:
            # Full: wait until the oldest send of the window is a whole window old.
            assert wait > 0
            assert now + wait == pytest.approx(sent[-per_minute] + 60.0)
        now += wait
        budget.record_send(now)
        budget.record_done(now)
        sent.append(now)
    assert len(sent) == len(gaps)


@settings(max_examples=20, deadline=None)
@given(per_minute=st.integers(min_value=1, max_value=30),
       extra=st.integers(min_value=1, max_value=40))
def test_a_burst_past_the_budget_waits_for_the_window(per_minute: int, extra: int) -> None:
    """A burst of more sends than the budget at one instant: the first ``per_minute`` go
    at once, every later one waits for the send one budget earlier to leave the window."""
    budget = RateBudget(per_minute, clock=FakeClock())
    sent: list[float] = []
    for _ in range(per_minute + extra):
        wait = budget.delay(0.0 if not sent else sent[-1])
        now = (sent[-1] if sent else 0.0) + wait
        budget.record_send(now)
        budget.record_done(now)
        sent.append(now)
    assert sent[:per_minute] == [0.0] * per_minute
    for i in range(per_minute, len(sent)):
        assert sent[i] == pytest.approx(sent[i - per_minute] + 60.0)


def test_slots_held_by_requests_in_flight_wait_for_an_answer() -> None:
    """When every slot is in flight the wait is open-ended, then one window after the answer."""
    budget = RateBudget(2, clock=FakeClock())
    budget.record_send(0.0)
    budget.record_send(0.0)
    assert budget.delay(100.0) == float("inf")
    budget.record_done(5.0)
    assert budget.delay(6.0) == pytest.approx(59.0)


async def test_concurrent_acquirers_share_one_window() -> None:
    """Many coroutines acquiring on one budget together never exceed it (FakeClock)."""
    clock = FakeClock()
    budget = RateBudget(10, clock=clock)
    sent: list[float] = []

    async def worker() -> None:
        for _ in range(5):
            await budget.acquire()
            sent.append(clock.monotonic())
            budget.done()

    await asyncio.gather(*(worker() for _ in range(8)))
    assert len(sent) == 40
    assert max_in_any_window(sent, 60.0) <= 10
    # 40 sends at 10 per minute: the last goes out three windows after the first.
    assert sent[-1] - sent[0] == pytest.approx(180.0)


def test_server_remaining_zero_holds_until_reset() -> None:
    """Remaining 0 from the server blocks sends until its reset, plus a little jitter."""
    budget = RateBudget(1000, clock=FakeClock(), rng=random.Random(1))
    budget.observe(1000, 0, reset_epoch=1_000_030.0, now=10.0, now_epoch=1_000_000.0)
    wait = budget.delay(10.0)
    assert 30.0 <= wait <= 31.0
    # After the reset the server's count is unknown again: sends may go.
    assert budget.delay(10.0 + wait) == 0.0


def test_server_remaining_is_shared_with_requests_in_flight() -> None:
    """Requests still in flight count against the server's remaining: no burst into 429s."""
    budget = RateBudget(1000, clock=FakeClock(), rng=random.Random(1))
    for _ in range(5):
        budget.record_send(0.0)
    budget.record_done(0.05)  # one answered, four still in flight
    budget.observe(1000, 6, reset_epoch=1_000_060.0, now=0.1, now_epoch=1_000_000.0)
    assert budget.server_left == 2
    budget.record_send(0.2)
    budget.record_send(0.3)
    assert budget.delay(0.4) >= 59.0


def test_late_answer_from_the_same_window_never_raises_the_estimate() -> None:
    """An older, higher remaining from the same window is ignored; a later window resets it."""
    budget = RateBudget(1000, clock=FakeClock(), rng=random.Random(1))
    budget.observe(100, 3, reset_epoch=1_000_060.0, now=0.0, now_epoch=1_000_000.0)
    budget.observe(100, 50, reset_epoch=1_000_060.0, now=0.1, now_epoch=1_000_000.1)
    assert budget.server_left == 3
    budget.observe(100, 99, reset_epoch=1_000_120.0, now=61.0, now_epoch=1_000_061.0)
    assert budget.server_left == 99
    budget.observe(100, 1, reset_epoch=1_000_060.0, now=61.5, now_epoch=1_000_061.5)
    assert budget.server_left == 99


def test_hold_blocks_every_caller() -> None:
    """A hold (after a 429) delays the next send even with budget to spare."""
    budget = RateBudget(1000, clock=FakeClock())
    budget.hold(12.5, now=100.0)
    assert budget.delay(100.0) == pytest.approx(12.5)
    assert budget.delay(112.5) == 0.0


async def test_acquire_sleeps_on_the_clock_for_the_window() -> None:
    """acquire() sleeps (on the injected clock) exactly until a slot frees up."""
    clock = FakeClock()
    budget = RateBudget(2, clock=clock)
    for _ in range(3):
        await budget.acquire()
        budget.done()
    assert clock.slept == [pytest.approx(60.0)]
    assert budget.waited == pytest.approx(60.0)


def test_short_windows_keep_the_rate() -> None:
    """A 1 s window at 6000/min allows 100 sends per second, not 6000."""
    budget = RateBudget(6000, clock=FakeClock(), window=1.0)
    for _ in range(100):
        assert budget.delay(5.0) == 0.0
        budget.record_send(5.0)
    assert budget.delay(5.0) == float("inf")
    budget.record_done(5.0)
    assert budget.delay(5.0) == pytest.approx(1.0)
    assert budget.in_window(5.5) == 100


def test_rejects_nonsense() -> None:
    """A budget below one request or an empty window is a programming error."""
    with pytest.raises(ValueError, match="per_minute"):
        RateBudget(0, clock=FakeClock())
    with pytest.raises(ValueError, match="window"):
        RateBudget(10, clock=FakeClock(), window=0)
