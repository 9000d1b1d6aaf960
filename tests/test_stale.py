"""The stale rule has one meaning: :func:`is_stale` over the streaks ``serve`` keeps
equals ``queries/stale_instances.sql`` (the report), at every moment."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nexus_audit.audit.report import build_report
from nexus_audit.audit.stale import current_streak_counts, is_stale
from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.model import CrawlSummary, Instance
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import FakeClock, Window
from nexus_audit.history.store import Store
from nexus_audit.service.runtime import Service

T0 = datetime(2026, 4, 1, tzinfo=UTC)
H = timedelta(hours=1)
PRICING = load_pricing()
STALE, PENDING = timedelta(hours=5), timedelta(hours=2)


def _inst(ident: str, status: str) -> Instance:
    return Instance(ident, ident, status, "eu-1", 2, 2.0, "micro", "{}", None, "{}")


def _crawl(store: Store, at: datetime, fleet: dict[str, str]) -> None:
    staged = store.begin_crawl("acme", ("instances",), at - timedelta(minutes=1))
    staged.add_instances([_inst(i, s) for i, s in sorted(fleet.items())])
    store.commit(staged, CrawlSummary(account="acme", kinds=("instances",),
                                      started_at=at - timedelta(minutes=1), finished_at=at,
                                      status="succeeded", instances=len(fleet)))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Ten hourly crawls: streaks of stopped and pending that begin, change and end."""
    s = Store(tmp_path / "h.duckdb")
    s.migrate()
    for hour in range(10):
        _crawl(s, T0 + hour * H, {
            "i-stopped-all-along": "stopped",
            "i-stopped-late": "stopped" if hour >= 6 else "running",
            "i-pending-then-stopped": "pending" if hour < 4 else "stopped",
            "i-pending-late": "pending" if hour >= 8 else "running",
            "i-running": "running",
        })
    return s


@pytest.mark.parametrize("minutes_after_last", [0, 30, 59, 60, 61, 90, 120, 150, 200, 300, 420])
def test_serve_counts_equal_the_report(store: Store, minutes_after_last: int) -> None:
    """At each moment, the stale instances the report lists, by status, are as many as the
    streaks :func:`is_stale` judges stale count (the streaks counted by their start)."""
    at = T0 + 9 * H + timedelta(minutes=minutes_after_last)
    report = build_report(store, Window(T0, at), stale_after=STALE, pending_stale_after=PENDING,
                          max_gap_instances=12 * H, max_gap_buckets=12 * H, pricing=PRICING,
                          now=at)
    counts = current_streak_counts(store, ["acme"], since=T0, until=at,
                                   max_gap_instances=12 * H, max_gap_buckets=12 * H,
                                   pricing=PRICING)
    ours: Counter[str] = Counter()
    for c in counts:
        if is_stale(c.status, c.since, at, stale_after=STALE, pending_stale_after=PENDING):
            ours[c.status] += c.number
    assert ours == Counter(i.status for i in report.stale_instances)
    # Stopped all along and pending, then stopped: one stretch not running since T0.
    assert {(c.account, c.status, c.since, c.number) for c in counts} == {
        ("acme", "stopped", T0, 2), ("acme", "stopped", T0 + 6 * H, 1),
        ("acme", "pending", T0 + 8 * H, 1)}


def test_the_rule_at_its_edges() -> None:
    """Exactly the threshold counts; running never does; pending has its own threshold."""
    since = T0
    kw = {"stale_after": STALE, "pending_stale_after": PENDING}
    assert is_stale("stopped", since, since + STALE, **kw)
    assert not is_stale("stopped", since, since + STALE - timedelta(microseconds=1), **kw)
    assert is_stale("pending", since, since + PENDING, **kw)
    assert not is_stale("pending", since, since + PENDING - timedelta(seconds=1), **kw)
    assert not is_stale("running", since, since + 100 * STALE, **kw)
    assert is_stale("some-new-status", since, since + STALE, **kw)


@pytest.mark.parametrize("minutes_after_last", [60, 300, 420])
def test_serve_shows_the_reports_stale_counts(store: Store, minutes_after_last: int) -> None:
    """serve's stale counts (nexus_stale_instances) at a moment are the report's stale
    instances counted by status: instances whose streaks began together count each."""
    at = T0 + 9 * H + timedelta(minutes=minutes_after_last)
    settings = Settings(accounts=(AccountConfig(name="acme", api_key=Secret("k")),),
                        db_path=store.path, interval=6 * H, stale_after=STALE,
                        pending_stale_after=PENDING)
    service = Service(settings, store, PRICING, clock=FakeClock(at), grace=0.0)
    snapshot = service.rebuild_snapshot()
    report = build_report(store, Window(T0, at), stale_after=STALE, pending_stale_after=PENDING,
                          max_gap_instances=12 * H, max_gap_buckets=12 * H, pricing=PRICING,
                          now=at)
    expected = Counter(i.status for i in report.stale_instances)
    assert expected["stopped"] >= 2  # the two whose streaks began together, at least
    assert {status: n for (_, status), n in snapshot.stale.items() if n} == dict(expected)
