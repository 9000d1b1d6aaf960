"""Property: cost accrual equals a brute-force hour-by-hour sum on random small histories."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_audit.domain.model import Instance
from nexus_audit.history.store import Store
from tests.test_queries import PRICES, T0, H, report
from tests.test_store import crawl, inst

IDS = ("i-1", "i-2", "i-3")
Snap = tuple[str, str, int, str]  # id, status, plan index, region
PLANS = (("micro", 2, 2.0), (None, 4, 16.0), (None, 1, 3.0))  # 1.00, 2.00, 1.25 per hour

snapshot = st.lists(
    st.tuples(st.sampled_from(IDS), st.sampled_from(("running", "stopped", "pending")),
              st.sampled_from(range(len(PLANS))), st.sampled_from(("eu-1", "us-1"))),
    max_size=3, unique_by=lambda t: t[0])
history = st.lists(
    st.tuples(st.integers(min_value=1, max_value=5), st.booleans(), snapshot),
    min_size=1, max_size=8)


def brute_force(crawls: list[tuple[int, bool, list[Instance]]], max_gap: int,
                since: int, until: int) -> float:
    """For each hour of the window, charge what the observation holding then shows."""
    good = [(t, records) for t, failed, records in crawls if not failed]
    total = 0.0
    for hour in range(since, until):
        holding = None
        for index, (t, records) in enumerate(good):
            t_next = good[index + 1][0] if index + 1 < len(good) else None
            end = min(t + max_gap, t_next if t_next is not None else 10**9)
            if t <= hour < end:
                holding = records
        for record in holding or ():
            if record.status == "running":
                total += PRICES.instance_hourly(record.plan, record.cpu, record.memory_gb)
    return total


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=history, max_gap=st.integers(min_value=1, max_value=4),
       since=st.integers(min_value=0, max_value=10), length=st.integers(min_value=1, max_value=30))
def test_accrual_matches_brute_force(history: list[tuple[int, bool, list[Snap]]],
                                     max_gap: int, since: int, length: int) -> None:
    """SQL accrual over versions and cumulative coverage equals the hour-by-hour sum."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "h.duckdb")
        store.migrate()
        crawls: list[tuple[int, bool, list[Instance]]] = []
        t = 0
        for step, failed, snap in history:
            t += step
            records = [inst(i, status=s, plan=PLANS[p][0], cpu=PLANS[p][1],
                            memory_gb=PLANS[p][2], region=r) for i, s, p, r in snap]
            crawl(store, T0 + t * H, instances=records, failed=failed)
            crawls.append((t, failed, records))
        until = since + length
        expected = brute_force(crawls, max_gap, since, until)
        has_crawl = any(since <= c[0] < until for c in crawls)
        if not has_crawl:
            return  # a window without crawls is NoDataError, tested elsewhere
        r = report(store, T0 + since * H, T0 + until * H, max_gap=max_gap * H)
        assert abs(r.cost.accrued.compute - expected) < 1e-6
        assert r.cost.accrued.storage == 0.0
        assert r.crawls.coverage.covered_seconds <= length * 3600 + 1e-6
        assert timedelta(seconds=sum((g.end - g.start).total_seconds()
                                     for g in r.crawls.coverage.gaps)) == timedelta(
            seconds=length * 3600 - r.crawls.coverage.covered_seconds)
