"""/metrics rendered per account and merged is byte for byte one render of the whole."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from nexus_audit.domain.model import Bucket, Instance
from nexus_audit.history.store import AccountState, CrawlInfo
from nexus_audit.metrics import (
    CrawlStateCollector,
    Exporter,
    FindingsCollector,
    InventoryCollector,
    PricingLabel,
    Snapshot,
    SnapshotHolder,
    build_snapshot,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
NAMES = ("prod", "dev", 'we"ird\\acct', "zé\nline", "a", "b-2")
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def state(rng: random.Random, account: str) -> AccountState:
    """An account's latest state with a random fleet (possibly empty or never crawled)."""
    regions = ["eu-1", "us-1", 'r"x'][: rng.randint(1, 3)]
    instances = tuple(
        Instance(f"i-{k}", f"n{k}", rng.choice(["running", "stopped", "pending"]),
                 rng.choice(regions), rng.randint(1, 4), 2.0, rng.choice(["micro", None]),
                 "{}", "2026-01-01T00:00:00Z", "{}")
        for k in range(rng.randint(0, 6)))
    buckets = tuple(
        Bucket(f"b-{k}", rng.choice(regions), rng.randint(0, 10**10),
               rng.choice(["private", "public", "Private "]), "2026-01-01T00:00:00Z", "{}", "{}")
        for k in range(rng.randint(0, 4)))
    info = CrawlInfo(crawl_id=rng.randint(1, 9), status=rng.choice(["succeeded", "failed"]),
                     started_at=T0, finished_at=T0 + timedelta(seconds=3), seconds=3.0,
                     requests=2, retries=0, total_mismatch=rng.choice([None, "10 vs 12"]),
                     error_code=None)
    seen = rng.random() < 0.8
    return AccountState(
        account=account, instances=instances if seen else (), buckets=buckets if seen else (),
        instances_as_of=T0 if seen else None, buckets_as_of=T0 if rng.random() < 0.8 else None,
        last_crawl={"instances": info} if rng.random() < 0.9 else {},
        last_success={"instances": T0} if seen else {}, crawls_by_status={"succeeded": 1},
        clock_corrections={"buckets": rng.randint(0, 2)})


def snapshot(rng: random.Random, generation: int) -> Snapshot:
    """A random snapshot of some accounts, with every kind of series there is."""
    names = sorted(rng.sample(NAMES, rng.randint(0, len(NAMES))))
    states = [state(rng, n) for n in names]
    findings = None if rng.random() < 0.3 else {
        (n, "bucket.public", "high", "open"): rng.randint(0, 3) for n in names}
    snap = build_snapshot(
        states, generation=generation, instance_price=lambda i: i.cpu * 0.25,
        bucket_price=lambda b: b.size_bytes / 1e12, per_instance=rng.random() < 0.5,
        per_bucket=rng.random() < 0.8, findings=findings,
        stale={(n, rng.choice(["stopped", "pending"])): rng.randint(0, 5) for n in names},
        pricing=PricingLabel(name="example", as_of="2026-01-01", currency="USD",
                             digest="sha256:00") if rng.random() < 0.8 else None)
    lost = {(rng.choice(NAMES), "buckets"): "disk full"} if rng.random() < 0.3 else {}
    return replace(snap, unrecorded=lost)


def exporter() -> Exporter:
    """An exporter over the three snapshot collectors (slices on)."""
    holder = SnapshotHolder()
    made = Exporter(holder, snapshot_collectors=[InventoryCollector(holder),
                                                 CrawlStateCollector(holder),
                                                 FindingsCollector(holder)],
                    live_collectors=[])
    assert made.slices is not None
    return made


@settings(max_examples=40, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**32), min_size=1, max_size=4))
@example(seeds=[232])  # one account with bucket series only, the other instance series only
def test_merged_slices_equal_one_render_of_the_whole(seeds: list[int]) -> None:
    """Over a run of random snapshots (accounts coming, going and changing, hostile
    names, lost crawls, findings on and off), the body installed from per-account slices
    is exactly one render of the whole snapshot, as text and as OpenMetrics."""
    made = exporter()
    made.render(OPENMETRICS)  # both formats rendered ahead at each install
    for generation, seed in enumerate(seeds, start=1):
        assert made.install(snapshot(random.Random(seed), generation))
        for accept, full in (("", generate_latest), (OPENMETRICS, openmetrics_latest)):
            body, _ = made.render(accept)
            assert body == full(made.snapshot_registry), (seed, accept)


def test_an_install_renders_only_the_accounts_that_changed() -> None:
    """After one account's part changes, an install renders that account's slice and the
    remainder, and reuses the others'."""
    rng = random.Random(7)
    names = ["a", "b", "c", "d"]
    states = [state(rng, n) for n in names]
    made = exporter()
    assert made.install(build_snapshot(states, generation=1))
    states[2] = replace(states[2], instances=(), instances_as_of=T0 + timedelta(hours=1))
    assert made.install(build_snapshot(states, generation=2))
    assert made.slices is not None
    assert made.slices.rendered == 2
    assert made.render("")[0] == generate_latest(made.snapshot_registry)
