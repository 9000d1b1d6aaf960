"""Fixed-window per-key rate limiting, driven by plain ``now`` values."""

from __future__ import annotations

from nexus_audit.simulator.ratelimit import FixedWindowLimiter


def test_window_counts_and_resets() -> None:
    """``limit`` requests pass, the next is refused without cost, a new window refills."""
    lim = FixedWindowLimiter(3, 60)
    now = 1_200.0  # window [1200, 1260)
    decisions = [lim.acquire("k", now + i) for i in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert {d.reset_at for d in decisions} == {1260}
    assert decisions[-1].retry_after == 1260 - 1203
    assert lim.peek("k", now).remaining == 0
    assert lim.acquire("k", 1260).remaining == 2


def test_keys_have_their_own_buckets() -> None:
    """One key's use does not touch another's."""
    lim = FixedWindowLimiter(1, 60)
    assert lim.acquire("a", 0).allowed
    assert not lim.acquire("a", 1).allowed
    assert lim.acquire("b", 1).allowed


def test_headers_and_retry_after_floor() -> None:
    """Headers are integers; Retry-After is at least 1 second even at a window's edge."""
    lim = FixedWindowLimiter(5, 0.5)
    d = lim.acquire("k", 10.4)
    assert d.headers() == {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "4",
        "X-RateLimit-Reset": "11",
    }
    assert d.retry_after == 1
