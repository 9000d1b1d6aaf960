"""Metrics collectors over a snapshot, the exporter's health families, the cached exposition."""

from __future__ import annotations

import gzip
import random
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from nexus_audit import __version__
from nexus_audit.api import ApiStats, RateBudget
from nexus_audit.domain.model import Bucket, Instance
from nexus_audit.domain.pricing import BYTES_PER_GB
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.history.readers import InstanceGroup
from nexus_audit.history.store import AccountState, CrawlInfo
from nexus_audit.metrics import (
    ApiCollector,
    BuildInfoCollector,
    CrawlStateCollector,
    CrawlStats,
    CrawlStatsCollector,
    Exporter,
    InventoryCollector,
    PricingLabel,
    SnapshotHolder,
    build_snapshot,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def inst(ident: str, status: str = "running", region: str = "us-east-1", cpu: int = 2,
         memory_gb: float = 4.0, plan: str | None = "micro", name: str | None = None) -> Instance:
    return Instance(id=ident, name=name or f"vm-{ident}", status=status, region=region, cpu=cpu,
                    memory_gb=memory_gb, plan=plan, tags="{}", created_at=None, extra="{}")


def bucket(ident: str, access: str = "private", region: str = "us-east-1",
           size: int = 1000) -> Bucket:
    return Bucket(id=ident, region=region, size_bytes=size, access=access, created_at=None,
                  tags="{}", extra="{}")


def crawl(status: str = "succeeded", finished: datetime = T0, mismatch: str | None = None
          ) -> CrawlInfo:
    return CrawlInfo(crawl_id=1, status=status, started_at=finished - timedelta(seconds=3),
                     finished_at=finished, seconds=3.0, requests=4, retries=0,
                     total_mismatch=mismatch, error_code=None if status == "succeeded" else "X")


PROD = AccountState(
    account="prod",
    instances=(inst("i-1"), inst("i-2", cpu=4, memory_gb=16), inst("i-3", status="stopped"),
               inst("i-4", region="eu-west-1", status="pending", plan=None)),
    buckets=(bucket("b-1", size=5_000), bucket("b-2", "public-read", size=7),
             bucket("b-3", "Weird", region="eu-west-1", size=1)),
    instances_as_of=T0 - timedelta(minutes=30),
    buckets_as_of=T0,
    last_crawl={"instances": crawl(finished=T0 - timedelta(minutes=30)),
                "buckets": crawl("failed", T0 + timedelta(minutes=1), mismatch=None)},
    last_success={"instances": T0 - timedelta(minutes=30), "buckets": T0},
    crawls_by_status={"succeeded": 2, "failed": 1},
)
NEW = AccountState(account="new", instances=(), buckets=(), instances_as_of=None,
                   buckets_as_of=None, last_crawl={"instances": crawl("failed")}, last_success={},
                   crawls_by_status={"failed": 1})
PRICING = PricingLabel(name="example", as_of="2026-01-01", currency="USD", digest="sha256:ab")


def registry_for(holder: SnapshotHolder) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(InventoryCollector(holder))
    registry.register(CrawlStateCollector(holder))
    return registry


def snapshot_registry(**options: object) -> CollectorRegistry:
    snap = build_snapshot([PROD, NEW], generation=1, **options)  # type: ignore[arg-type]
    return registry_for(SnapshotHolder(snap))


def test_instances_by_account_region_and_status() -> None:
    """Counts, vCPUs and memory bytes (GB x 10^9) per account, region and status."""
    reg = snapshot_registry()
    labels = {"account": "prod", "region": "us-east-1", "status": "running"}
    assert reg.get_sample_value("nexus_instances", labels) == 2
    assert reg.get_sample_value("nexus_instance_vcpus", labels) == 6
    assert reg.get_sample_value("nexus_instance_memory_bytes", labels) == 20 * BYTES_PER_GB
    assert reg.get_sample_value("nexus_instances", {**labels, "status": "stopped"}) == 1
    assert reg.get_sample_value(
        "nexus_instances", {"account": "prod", "region": "eu-west-1", "status": "pending"}) == 1


def test_buckets_by_access_and_public_count_fail_closed() -> None:
    """Bucket counts and bytes by access; any access but private counts as public."""
    reg = snapshot_registry()
    private = {"account": "prod", "region": "us-east-1", "access": "private"}
    assert reg.get_sample_value("nexus_buckets", private) == 1
    assert reg.get_sample_value("nexus_buckets_size_bytes", private) == 5_000
    assert reg.get_sample_value("nexus_public_buckets", {"account": "prod"}) == 2
    assert reg.get_sample_value(
        "nexus_bucket_public",
        {"account": "prod", "bucket": "b-3", "region": "eu-west-1", "access": "Weird"}) == 1
    assert reg.get_sample_value(
        "nexus_bucket_public",
        {"account": "prod", "bucket": "b-1", "region": "us-east-1", "access": "private"}) == 0
    assert reg.get_sample_value(
        "nexus_bucket_size_bytes", {"account": "prod", "bucket": "b-2", "region": "us-east-1"}) == 7


def test_per_bucket_series_can_be_switched_off() -> None:
    """With per-bucket metrics off, no per-bucket series are emitted (aggregates stay)."""
    reg = snapshot_registry(per_bucket=False)
    assert reg.get_sample_value(
        "nexus_bucket_size_bytes", {"account": "prod", "bucket": "b-1", "region": "us-east-1"}
    ) is None
    assert reg.get_sample_value("nexus_public_buckets", {"account": "prod"}) == 2


def test_per_instance_series_are_off_by_default_and_switchable() -> None:
    """nexus_instance_info appears only when per-instance metrics are on; plan may be empty."""
    info = {"account": "prod", "instance": "i-4", "name": "vm-i-4", "region": "eu-west-1",
            "status": "pending", "plan": ""}
    assert snapshot_registry().get_sample_value("nexus_instance_info", info) is None
    assert snapshot_registry(per_instance=True).get_sample_value("nexus_instance_info", info) == 1


def test_cost_run_rate_counts_running_compute_and_all_storage() -> None:
    """Compute cost sums running instances only; storage sums every bucket; pricing info = 1."""
    reg = snapshot_registry(instance_price=lambda i: 0.01 * i.cpu,
                            bucket_price=lambda b: b.size_bytes * 1e-6, pricing=PRICING)
    compute = reg.get_sample_value(
        "nexus_cost_hourly", {"account": "prod", "region": "us-east-1", "kind": "compute"})
    assert compute == pytest.approx(0.06)
    assert reg.get_sample_value(
        "nexus_cost_hourly", {"account": "prod", "region": "eu-west-1", "kind": "compute"}) is None
    storage = reg.get_sample_value(
        "nexus_cost_hourly", {"account": "prod", "region": "us-east-1", "kind": "storage"})
    assert storage == pytest.approx(5_007e-6)
    assert reg.get_sample_value(
        "nexus_pricing_info",
        {"name": "example", "as_of": "2026-01-01", "currency": "USD", "digest": "sha256:ab"}) == 1


def test_stale_instances_are_zero_unless_given_and_only_for_known_accounts() -> None:
    """Stale counts default to 0 per status once instances were crawled; others are dropped."""
    reg = snapshot_registry(stale={("prod", "stopped"): 3, ("gone", "stopped"): 9})
    assert reg.get_sample_value("nexus_stale_instances",
                                {"account": "prod", "status": "stopped"}) == 3
    assert reg.get_sample_value("nexus_stale_instances",
                                {"account": "prod", "status": "pending"}) == 0
    assert reg.get_sample_value("nexus_stale_instances",
                                {"account": "gone", "status": "stopped"}) is None
    assert reg.get_sample_value("nexus_stale_instances",
                                {"account": "new", "status": "stopped"}) is None


def test_inventory_timestamp_is_the_observation_time_per_kind() -> None:
    """nexus_inventory_timestamp_seconds is each kind's latest successful crawl time."""
    reg = snapshot_registry()
    assert reg.get_sample_value("nexus_inventory_timestamp_seconds",
                                {"account": "prod", "kind": "instances"}) == (
        T0 - timedelta(minutes=30)).timestamp()
    assert reg.get_sample_value("nexus_inventory_timestamp_seconds",
                                {"account": "new", "kind": "instances"}) is None


def test_crawl_state_from_the_last_committed_crawls() -> None:
    """crawl_success follows the last crawl; last success and total mismatch per kind."""
    reg = snapshot_registry()
    assert reg.get_sample_value("nexus_audit_crawl_success",
                                {"account": "prod", "kind": "instances"}) == 1
    assert reg.get_sample_value("nexus_audit_crawl_success",
                                {"account": "prod", "kind": "buckets"}) == 0
    assert reg.get_sample_value("nexus_audit_crawl_success",
                                {"account": "new", "kind": "instances"}) == 0
    assert reg.get_sample_value("nexus_audit_last_success_timestamp_seconds",
                                {"account": "prod", "kind": "buckets"}) == T0.timestamp()
    assert reg.get_sample_value("nexus_audit_last_success_timestamp_seconds",
                                {"account": "new", "kind": "instances"}) is None
    assert reg.get_sample_value("nexus_audit_total_mismatch",
                                {"account": "prod", "kind": "instances"}) == 0


def test_mismatch_flag_is_one_when_the_last_crawl_noted_one() -> None:
    """A total_mismatch note on the last crawl sets nexus_audit_total_mismatch to 1."""
    state = AccountState(account="a", instances=(), buckets=(), instances_as_of=T0,
                         buckets_as_of=None, last_crawl={"instances": crawl(mismatch="99 != 100")},
                         last_success={"instances": T0}, crawls_by_status={"succeeded": 1})
    reg = registry_for(SnapshotHolder(build_snapshot([state], generation=1)))
    assert reg.get_sample_value("nexus_audit_total_mismatch",
                                {"account": "a", "kind": "instances"}) == 1


def test_crawl_counters_and_duration_histogram() -> None:
    """Counters start at 0 per status, only go up, and the histogram buckets are cumulative."""
    stats = CrawlStats(["prod"])
    reg = CollectorRegistry(auto_describe=True)
    reg.register(CrawlStatsCollector(stats))
    labels = {"account": "prod", "kind": "buckets", "status": "failed"}
    assert reg.get_sample_value("nexus_audit_crawls_total", labels) == 0
    stats.record("prod", ["buckets"], "succeeded", 0.7)
    stats.record("prod", ["instances", "buckets"], "failed", 42.0)
    assert reg.get_sample_value("nexus_audit_crawls_total", labels) == 1
    assert reg.get_sample_value("nexus_audit_crawls_total",
                                {"account": "prod", "kind": "instances", "status": "failed"}) == 1
    hist = {"account": "prod", "kind": "buckets"}
    assert reg.get_sample_value("nexus_audit_crawl_duration_seconds_bucket",
                                {**hist, "le": "1.0"}) == 1
    assert reg.get_sample_value("nexus_audit_crawl_duration_seconds_bucket",
                                {**hist, "le": "60.0"}) == 2
    assert reg.get_sample_value("nexus_audit_crawl_duration_seconds_bucket",
                                {**hist, "le": "+Inf"}) == 2
    assert reg.get_sample_value("nexus_audit_crawl_duration_seconds_count", hist) == 2
    assert reg.get_sample_value("nexus_audit_crawl_duration_seconds_sum", hist) == 42.7


def test_api_collector_reads_the_shared_stats_and_budget() -> None:
    """Requests, retries, invalid records, rate-limit headers and the budget, per account."""
    stats = ApiStats()
    stats.requests[("GET /instances", "200")] += 3
    stats.requests[("GET /instances", "429")] += 1
    stats.retries[("GET /instances", "429")] += 1
    stats.invalid_records["buckets"] += 2
    stats.rate_limit_remaining = 997
    stats.rate_limit_limit = 1000
    reg = CollectorRegistry(auto_describe=True)
    reg.register(ApiCollector({"prod": stats}, {"prod": RateBudget(250, clock=FakeClock())}))
    reg.register(BuildInfoCollector(__version__))
    assert reg.get_sample_value("nexus_audit_api_requests_total",
                                {"account": "prod", "endpoint": "GET /instances",
                                 "code": "429"}) == 1
    assert reg.get_sample_value("nexus_audit_api_retries_total",
                                {"account": "prod", "endpoint": "GET /instances",
                                 "reason": "429"}) == 1
    assert reg.get_sample_value("nexus_audit_invalid_records_total",
                                {"account": "prod", "kind": "buckets"}) == 2
    assert reg.get_sample_value("nexus_audit_invalid_records_total",
                                {"account": "prod", "kind": "instances"}) == 0
    assert reg.get_sample_value("nexus_audit_rate_limit_remaining", {"account": "prod"}) == 997
    assert reg.get_sample_value("nexus_audit_rate_limit_limit", {"account": "prod"}) == 1000
    assert reg.get_sample_value("nexus_audit_rate_budget_requests_per_minute",
                                {"account": "prod"}) == 250
    assert reg.get_sample_value("nexus_audit_build_info", {"version": __version__}) == 1


def make_exporter(holder: SnapshotHolder, stats: CrawlStats) -> Exporter:
    return Exporter(holder,
                    snapshot_collectors=[InventoryCollector(holder), CrawlStateCollector(holder)],
                    live_collectors=[CrawlStatsCollector(stats), BuildInfoCollector("1.2.3")])


def parse(body: bytes) -> dict[str, float]:
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def test_exposition_shows_a_new_snapshot_once_installed_and_live_counters_always() -> None:
    """The cached snapshot part changes only on install; live counters move on every scrape."""
    holder = SnapshotHolder()
    stats = CrawlStats(["prod"])
    exporter = make_exporter(holder, stats)
    assert exporter.install(build_snapshot([PROD], generation=1))
    body, content_type = exporter.render("")
    assert content_type.startswith("text/plain")
    before = parse(body)
    key = "nexus_instances[('account', 'prod'), ('region', 'us-east-1'), ('status', 'running')]"
    assert before[key] == 2
    stats.record("prod", ["instances"], "succeeded", 1.0)
    after = parse(exporter.render("")[0])
    ok = ("nexus_audit_crawls_total[('account', 'prod'), ('kind', 'instances'), "
          "('status', 'succeeded')]")
    assert (before[ok], after[ok]) == (0, 1)
    smaller = AccountState(**{**{f: getattr(PROD, f) for f in PROD.__dataclass_fields__},
                              "instances": (inst("i-1"),)})
    assert exporter.install(build_snapshot([smaller], generation=2))
    assert parse(exporter.render("")[0])[key] == 1


def test_an_older_snapshot_never_replaces_a_newer_one() -> None:
    """Snapshots built out of order: the older generation is refused."""
    holder = SnapshotHolder()
    exporter = make_exporter(holder, CrawlStats())
    assert exporter.install(build_snapshot([PROD], generation=5))
    assert not exporter.install(build_snapshot([NEW], generation=4))
    assert holder.current.accounts == ("prod",)


def test_openmetrics_is_negotiated_and_ends_with_one_eof() -> None:
    """An OpenMetrics Accept header gets OpenMetrics text with a single trailing # EOF."""
    holder = SnapshotHolder()
    exporter = make_exporter(holder, CrawlStats(["prod"]))
    exporter.install(build_snapshot([PROD], generation=1))
    body, content_type = exporter.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert body.count(b"# EOF") == 1
    assert b"nexus_instances{" in body


@pytest.mark.prometheus
def test_promtool_accepts_the_exposition(promtool_path: str) -> None:
    """promtool check metrics finds nothing to complain about in a full exposition."""
    holder = SnapshotHolder()
    stats = ApiStats()
    stats.requests[("GET /buckets", "200")] += 1
    exporter = Exporter(
        holder,
        snapshot_collectors=[InventoryCollector(holder), CrawlStateCollector(holder)],
            live_collectors=[CrawlStatsCollector(CrawlStats(["prod"])),
                         ApiCollector({"prod": stats},
                                      {"prod": RateBudget(250, clock=FakeClock())}),
                         BuildInfoCollector("1.2.3")])
    exporter.install(build_snapshot([PROD, NEW], generation=1, per_instance=True,
                                    instance_price=lambda i: 0.5, bucket_price=lambda b: 0.1,
                                    pricing=PRICING, stale={("prod", "stopped"): 1}))
    body, _ = exporter.render("")
    result = subprocess.run([promtool_path, "check", "metrics"], input=body, capture_output=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.strip() == b""
    assert result.stderr.strip() == b""



def test_cached_scrapes_need_no_render_and_gzip_is_one_stream() -> None:
    """After an install the default format is served from the cache (gzip: one stream of
    the same bytes, live part included); a format first asked for needs one render, and
    every later install renders it ahead."""
    holder = SnapshotHolder()
    stats = CrawlStats(["prod"])
    exporter = make_exporter(holder, stats)
    assert exporter.install(build_snapshot([PROD], generation=1))
    plain = exporter.cached("")
    zipped = exporter.cached("", gzip=True)
    assert plain is not None
    assert zipped is not None
    assert gzip.decompress(zipped[0]) == plain[0]
    stats.record("prod", ["instances"], "succeeded", 1.0)
    moved = exporter.cached("", gzip=True)
    assert moved is not None
    assert gzip.decompress(moved[0]) == exporter.render("")[0] != plain[0]
    openmetrics = "application/openmetrics-text; version=1.0.0"
    assert exporter.cached(openmetrics) is None
    rendered = exporter.render(openmetrics)
    assert exporter.cached(openmetrics) == rendered
    assert exporter.install(build_snapshot([PROD, NEW], generation=2))
    ahead = exporter.cached(openmetrics)
    assert ahead is not None
    assert ahead[0] != rendered[0]
    assert ahead[0].count(b"# EOF") == 1


def _groups(records: list[Instance]) -> tuple[InstanceGroup, ...]:
    counted: dict[tuple[str, str, str | None, int, float], int] = {}
    for i in records:
        key = (i.region, i.status, i.plan, i.cpu, i.memory_gb)
        counted[key] = counted.get(key, 0) + 1
    return tuple(InstanceGroup(*key, number=n) for key, n in sorted(
        counted.items(), key=repr))


@given(st.lists(st.tuples(st.sampled_from(["running", "stopped", "pending"]),
                          st.sampled_from(["eu-1", "us-1"]),
                          st.sampled_from([(1, 0.1), (2, 0.7), (3, 1.3), (16, 64.0)]),
                          st.sampled_from(["nano", "micro", None])),
                min_size=1, max_size=60),
       st.randoms(use_true_random=False))
@settings(max_examples=150, deadline=None)
def test_counted_groups_fold_to_the_records_sums_to_the_last_bit(
        rows: list[tuple[str, str, tuple[int, float], str | None]], rng: random.Random
        ) -> None:
    """Instances read as records (in any order) or counted by region, status and shape
    (serve without per-instance series) give the same counts, vCPUs, memory and compute
    cost, float for float: each sum is rounded once, not in the order of the records."""
    records = [inst(f"i-{n}", status, region, cpu, memory, plan)
               for n, (status, region, (cpu, memory), plan) in enumerate(rows)]
    shuffled = records[:]
    rng.shuffle(shuffled)

    def price(i: Instance) -> float:
        return 0.1 * i.cpu + 0.07 * i.memory_gb + (0.013 if i.plan else 0.0)

    def fold(state: AccountState) -> tuple[object, object]:
        snap = build_snapshot([state], generation=1, instance_price=price)
        return snap.instances, snap.cost_hourly

    as_records = fold(replace(PROD, instances=tuple(records), buckets=()))
    assert fold(replace(PROD, instances=tuple(shuffled), buckets=())) == as_records
    assert fold(replace(PROD, instances=(), buckets=(),
                        instance_groups=_groups(records))) == as_records
