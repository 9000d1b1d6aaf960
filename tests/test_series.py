"""The report's daily series (``build_report(..., series=True)``) against a brute-force
model of the same history: one crawl at a time, one day at a time, in plain Python."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from nexus_audit.audit.report import Report, build_report
from nexus_audit.audit.series import window_days
from nexus_audit.domain.model import Bucket, Instance
from nexus_audit.domain.timeutil import Window
from nexus_audit.history.store import Store
from tests.test_queries import PRICES, H
from tests.test_store import bucket, crawl, inst

T0 = datetime(2026, 3, 1, 5, 0, tzinfo=UTC)
MAX_GAP = 8 * H
#: PRICES: micro 1.00/h, standard 2.00/h; storage 730 per GB-month = 1.00 per GB-hour.
HOURLY = {"micro": 1.0, "standard": 2.0}

Fleet = tuple[list[Instance], list[Bucket]]


def random_history(store: Store, seed: int) -> list[tuple[datetime, Fleet]]:
    """Five days of crawls every 3 to 11 hours (some gaps longer than max_gap), a fleet
    that churns; returns each successful crawl's time and what it saw."""
    rng = random.Random(seed)
    at = T0
    seen: list[tuple[datetime, Fleet]] = []
    instances = {f"i-{n}": inst(f"i-{n}", plan=rng.choice(("micro", "standard")),
                                status=rng.choice(("running", "stopped")))
                 for n in range(4)}
    buckets = {f"b-{n}": bucket(f"b-{n}", size=rng.randrange(1, 5) * 10**9) for n in range(3)}
    serial = 4
    while at < T0 + 5 * 24 * H:
        for ident in rng.sample(sorted(instances), k=2):
            old = instances[ident]
            instances[ident] = old._replace(
                status="stopped" if old.status == "running" else "running")
        if rng.random() < 0.5:
            instances.pop(rng.choice(sorted(instances)))
            instances[f"i-{serial}"] = inst(f"i-{serial}", plan="micro",
                                            status=rng.choice(("running", "pending")))
            serial += 1
        name = rng.choice(sorted(buckets))
        buckets[name] = buckets[name]._replace(
            size_bytes=buckets[name].size_bytes + 10**8,
            access=rng.choice(("private", "private", "public-read")))
        failed = rng.random() < 0.1
        fleet = (list(instances.values()), list(buckets.values()))
        crawl(store, at, instances=fleet[0], buckets=fleet[1], failed=failed)
        if not failed:
            seen.append((at, fleet))
        at += rng.randrange(3, 12) * H
    return seen


def build(store: Store, window: Window, *, series: bool = True) -> Report:
    """The report over ``window`` with the test prices."""
    return build_report(store, window, stale_after=24 * H, pending_stale_after=H,
                        max_gap_instances=MAX_GAP, max_gap_buckets=MAX_GAP, pricing=PRICES,
                        now=window.until, series=series)


def expected_cost(seen: list[tuple[datetime, Fleet]], window: Window) -> dict[date, list[float]]:
    """Compute and storage per UTC day: each crawl's fleet at its prices, for the time its
    observation holds (until the next crawl, at most max_gap), inside the window."""
    days: dict[date, list[float]] = {d: [0.0, 0.0] for d in window_days(window)}
    for n, (at, (instances, buckets)) in enumerate(seen):
        end = min(seen[n + 1][0] if n + 1 < len(seen) else datetime.max.replace(tzinfo=UTC),
                  at + MAX_GAP)
        start, end = max(at, window.since), min(end, window.until)
        compute = sum(HOURLY[i.plan or ""] for i in instances if i.status == "running")
        storage = sum(b.size_bytes for b in buckets) / 1e9
        moment = start
        while moment < end:
            midnight = datetime.combine(moment.date() + timedelta(days=1), datetime.min.time(),
                                        tzinfo=UTC)
            piece = (min(end, midnight) - moment).total_seconds() / 3600
            days[moment.date()][0] += compute * piece
            days[moment.date()][1] += storage * piece
            moment = min(end, midnight)
    return days


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_series_match_a_brute_force_model(tmp_path: Path, seed: int) -> None:
    """Cost per day, instances by status, buckets and bytes per day and drift per day are
    what replaying the crawls one by one gives; the days of cost add up to the report's
    accrued cost."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    seen = random_history(store, seed)
    window = Window(T0 + 13 * H, T0 + 4 * 24 * H + 7 * H)
    report = build(store, window)
    series = report.series
    assert series is not None

    want = expected_cost(seen, window)
    assert [c.day for c in series.cost] == list(want)
    for point in series.cost:
        assert point.compute == pytest.approx(want[point.day][0], abs=1e-9)
        assert point.storage == pytest.approx(want[point.day][1], abs=1e-9)
    assert sum(c.compute for c in series.cost) == pytest.approx(report.cost.accrued.compute)
    assert sum(c.storage for c in series.cost) == pytest.approx(report.cost.accrued.storage)

    inside = [(at, fleet) for at, fleet in seen if window.since <= at < window.until]
    last_of_day = {at.date(): fleet for at, fleet in inside}  # in time order: the day's last
    assert {d.day: d.by_status for d in series.instances} == {
        day: dict(sorted(Counter(i.status for i in fleet[0]).items()))
        for day, fleet in last_of_day.items()}
    assert {d.day: (d.count, d.size_bytes) for d in series.buckets} == {
        day: (len(fleet[1]), sum(b.size_bytes for b in fleet[1]))
        for day, fleet in last_of_day.items()}
    by_day: dict[date, Counter[str]] = {}
    for row in report.drift:
        by_day.setdefault(row.observed_at.date(), Counter())[row.change] += 1
    assert {d.day: d.by_change for d in series.drift} == {k: dict(v) for k, v in by_day.items()}
    assert series.drift, "the history has drift inside the window"


def test_series_key_only_when_asked(tmp_path: Path) -> None:
    """The JSON gains ``series`` only with series=True (so the report JSON and its golden
    file are unchanged by default); days are ISO dates."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    random_history(store, 4)
    window = Window(T0, T0 + 2 * 24 * H)
    assert "series" not in build(store, window, series=False).to_json_dict()
    data = build(store, window).to_json_dict()["series"]
    assert set(data) == {"cost", "instances", "buckets", "drift"}
    assert [p["day"] for p in data["cost"]] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert set(data["cost"][0]) == {"day", "compute", "storage"}
    assert set(data["buckets"][0]) == {"day", "count", "size_bytes"}


def test_window_days_cover_partial_days() -> None:
    """Every UTC day the half-open window touches, and no day it only ends at."""
    window = Window(datetime(2026, 3, 1, 23, 0, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC))
    assert window_days(window) == [date(2026, 3, 1), date(2026, 3, 2)]
