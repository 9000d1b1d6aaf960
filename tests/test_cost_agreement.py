"""One price rule, two implementations: /metrics' hourly cost (Python, per record) and the
report's run rate (SQL over history) agree to the cent on the same stored state.

``Pricing.instance_hourly``/``storage_hourly`` price each record for ``nexus_cost_hourly``;
``queries/instance_prices.sql`` and ``run_rate.sql`` price the same versions for the
report. Every branch of the rule is exercised: plan price, a plan matched by size,
per-vCPU/per-GB rates, stopped instances (no compute), odd bucket sizes in several regions.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nexus_audit.audit.report import build_report
from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.model import Bucket, CrawlSummary, Instance
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import FakeClock, Window
from nexus_audit.history.store import Store
from nexus_audit.service.runtime import Service

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
PRICING = load_pricing()  # the shipped example list: non-round prices


def _instance(ident: str, region: str, *, plan: str | None, cpu: int, memory_gb: float,
              status: str = "running") -> Instance:
    return Instance(ident, ident, status, region, cpu, memory_gb, plan, "{}", None, "{}")


def _bucket(ident: str, region: str, size: int, access: str = "private") -> Bucket:
    return Bucket(ident, region, size, access, None, "{}", "{}")


FLEET: dict[str, tuple[list[Instance], list[Bucket]]] = {
    "acme": ([
        _instance("i-plan", "eu-1", plan="standard", cpu=4, memory_gb=16),
        _instance("i-size", "eu-1", plan=None, cpu=16, memory_gb=64),       # performance
        _instance("i-unknown-plan", "us-1", plan="mega", cpu=2, memory_gb=2),  # micro's size
        _instance("i-rates", "us-1", plan=None, cpu=3, memory_gb=7.5),
        _instance("i-stopped", "us-1", plan="performance", cpu=16, memory_gb=64,
                  status="stopped"),
        _instance("i-pending", "ap-1", plan="nano", cpu=1, memory_gb=1, status="pending"),
    ], [
        _bucket("b-odd", "eu-1", 123_456_789_012),
        _bucket("b-big", "us-1", 9_876_543_210_987, access="public-read"),
        _bucket("b-empty", "ap-1", 0),
    ]),
    "beta": ([
        _instance("j-1", "eu-1", plan="micro", cpu=2, memory_gb=2),
        _instance("j-2", "eu-1", plan=None, cpu=7, memory_gb=0.5),
    ], [_bucket("c-1", "eu-1", 1_000_000_001)]),
}


def _commit(store: Store, account: str, at: datetime) -> None:
    instances, buckets = FLEET[account]
    staged = store.begin_crawl(account, ("instances", "buckets"), at - timedelta(minutes=1))
    staged.add_instances(instances)
    staged.add_buckets(buckets)
    store.commit(staged, CrawlSummary(
        account=account, kinds=("instances", "buckets"), started_at=at - timedelta(minutes=1),
        finished_at=at, status="succeeded", instances=len(instances), buckets=len(buckets)))


@pytest.fixture
def service(tmp_path: Path) -> Service:
    """A never-started Service over a store holding one crawl of each account."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    for n, account in enumerate(FLEET):
        _commit(store, account, NOW - timedelta(minutes=30 - n))
    settings = Settings(accounts=tuple(AccountConfig(name=a, api_key=Secret(f"nx_test_{a}"))
                                       for a in FLEET), db_path=store.path)
    return Service(settings, store, PRICING, clock=FakeClock(NOW), grace=0.0)


@pytest.mark.parametrize("account", sorted(FLEET))
def test_metrics_cost_equals_report_run_rate(service: Service, account: str) -> None:
    """nexus_cost_hourly by region and kind sums to the report's run_rate_hourly, to the cent,
    by kind and by region."""
    snapshot = service.rebuild_snapshot()
    metrics: dict[tuple[str, str], float] = defaultdict(float)
    for (acct, region, kind), value in snapshot.cost_hourly.items():
        if acct == account:
            metrics[(region, kind)] += value
    report = build_report(
        service.store, Window(NOW - timedelta(hours=1), NOW), accounts=[account],
        stale_after=timedelta(days=7), pending_stale_after=timedelta(hours=1),
        max_gap_instances=timedelta(hours=2), max_gap_buckets=timedelta(hours=2),
        pricing=PRICING, now=NOW).cost.run_rate_hourly
    compute = sum(v for (_, kind), v in metrics.items() if kind == "compute")
    storage = sum(v for (_, kind), v in metrics.items() if kind == "storage")
    assert compute > 0  # both sides priced something
    assert storage > 0
    assert compute == pytest.approx(report.compute, abs=0.005)
    assert storage == pytest.approx(report.storage, abs=0.005)
    regions = {region for region, _ in metrics} | set(report.by_region)
    for region in regions:
        ours = metrics[(region, "compute")] + metrics[(region, "storage")]
        assert ours == pytest.approx(report.by_region.get(region, 0.0), abs=0.005), region


def test_serve_counts_instances_without_their_records(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without per-instance series (the default), serve reads the instances counted by
    region, status and shape, not their records, and shows the same counts, memory and
    cost as from the records (per-instance series on)."""
    asked: list[bool] = []
    latest = service.store.latest

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("records", True))
        return latest(*args, **kwargs)

    monkeypatch.setattr(service.store, "latest", spy)
    counted = service.rebuild_snapshot()
    assert asked == [False]
    on = Service(replace(service.settings, per_instance_metrics=True), service.store, PRICING,
                 clock=FakeClock(NOW), grace=0.0)
    from_records = on.rebuild_snapshot()
    assert asked == [False, True]
    assert counted.instances == from_records.instances
    assert counted.cost_hourly == from_records.cost_hourly
    assert counted.instance_series == ()
    assert len(from_records.instance_series) == sum(len(i) for i, _ in FLEET.values())
