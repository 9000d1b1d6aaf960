"""The snapshot rebuilt after a bucket poll (buckets only) equals a full rebuild."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.model import Kind
from nexus_audit.domain.policy import parse_policy
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.history.store import Store
from nexus_audit.metrics import Snapshot, build_snapshot
from nexus_audit.service.runtime import Service
from tests.test_queries import PRICES, T0, H
from tests.test_store import bucket, crawl, inst

POLICY = parse_policy(b"""
[baseline]
allowed_regions = ["eu-1"]
required_tags = ["team"]
max_public_bucket_size = "5GB"
[[exceptions]]
bucket = "b-2"
reason = "reviewed"
owner = "sec@example.com"
expires = 2026-03-01T01:30:00Z
""", "p.toml")
M = timedelta(minutes=1)


def make_service(store: Store, clock: FakeClock) -> Service:
    """A Service over two accounts with per-instance series and the policy (never started)."""
    settings = Settings(
        accounts=(AccountConfig(name="acme", api_key=Secret("nx_test_a")),
                  AccountConfig(name="beta", api_key=Secret("nx_test_b"))),
        db_path=store.path, per_instance_metrics=True)
    return Service(settings, store, PRICES, clock=clock, grace=0.0, policy=POLICY)


def same(a: Snapshot, b: Snapshot) -> bool:
    """Equal but for the generation."""
    return replace(a, generation=0) == replace(b, generation=0)


def test_incremental_rebuilds_equal_full_rebuilds(tmp_path: Path) -> None:
    """After every bucket poll, instance crawl and failed crawl of a two-account history,
    the rebuild of the changed kind equals a full rebuild (stale counts moving with time
    between instance crawls and expiring exceptions included)."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    clock = FakeClock(T0)
    incremental = make_service(store, clock)
    fleet = {"acme": [inst("i-1"), inst("i-2", status="pending", region="ap-1"),
                      inst("i-3", status="stopped", tags='{"team":"x"}')],
             "beta": [inst("j-1", plan=None, cpu=4, memory_gb=16.0)]}
    buckets = {"acme": [bucket("b-1"), bucket("b-2", access="public"),
                        bucket("b-3", region="us-1", size=7 * 10**9)],
               "beta": [bucket("c-1", access="public-read")]}
    steps: list[tuple[datetime, str, tuple[Kind, ...], bool]] = [
        (T0, "acme", ("instances", "buckets"), False),
        (T0 + M, "beta", ("instances", "buckets"), False)]
    for k in range(1, 13):  # bucket polls every 10 minutes for two hours
        steps.append((T0 + 10 * k * M, "acme" if k % 3 else "beta", ("buckets",), k == 5))
    steps.append((T0 + 65 * M, "acme", ("instances",), False))
    steps.sort()
    stale_turned: tuple[Kind, ...] | None = None
    expired_turned: tuple[Kind, ...] | None = None
    for n, (at, account, kinds, failed) in enumerate(steps):
        if at > T0 + 30 * M:
            buckets["acme"][0] = bucket("b-1", access="public" if n % 2 else "private")
            buckets["acme"][2] = bucket("b-3", region="us-1", size=(7 + n) * 10**9)
        if "instances" in kinds and at > T0 + H:
            fleet["acme"][0] = inst("i-1", status="stopped")
        crawl(store, at, account=account, failed=failed,
              instances=fleet[account] if "instances" in kinds else None,
              buckets=buckets[account] if "buckets" in kinds else None)
        clock.advance((at + 5 * timedelta(seconds=1) - clock.now()).total_seconds())
        got = incremental.rebuild_snapshot(kinds=kinds)
        full = make_service(store, clock).rebuild_snapshot()
        assert same(got, full), f"step {n}: {kinds} at {at}"
        assert got.findings is not None
        if got.stale.get(("acme", "pending")) and stale_turned is None:
            stale_turned = kinds
        if got.findings.get(("acme", "bucket.public", "critical", "expired")) \
                and expired_turned is None:
            expired_turned = kinds
    # The pending instance turns stale an hour in and b-2's exception expires at 1:30,
    # both first seen at rebuilds after bucket polls: those moved with time, not records.
    assert stale_turned == ("buckets",)
    assert expired_turned == ("buckets",)


def test_a_snapshot_of_some_kinds_needs_the_previous_one() -> None:
    """build_snapshot refuses to fold buckets only without a previous snapshot to reuse."""
    with pytest.raises(ValueError, match="previous"):
        build_snapshot([], generation=1, kinds=("buckets",))


def test_a_bucket_rebuild_after_an_unseen_instance_commit_reads_instances(
        tmp_path: Path) -> None:
    """A bucket-poll rebuild that runs after an instance crawl committed (its rebuild still
    queued) does not show the old instances with the new crawl's time: it reads them."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    clock = FakeClock(T0 + H)
    service = make_service(store, clock)
    crawl(store, T0, instances=[inst("i-1")], buckets=[bucket("b-1")])
    service.rebuild_snapshot()
    crawl(store, T0 + 10 * M, buckets=[bucket("b-1", access="public")])
    crawl(store, T0 + 11 * M, instances=[inst("i-1"), inst("i-2")])
    got = service.rebuild_snapshot(kinds=("buckets",))
    assert sum(t.count for t in got.instances.values()) == 2
    assert same(got, make_service(store, clock).rebuild_snapshot())
