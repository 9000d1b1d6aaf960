"""The snapshot rebuilt per account that committed equals a full rebuild of every account."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from nexus_audit.audit.stale import is_stale
from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.model import Bucket, Instance, Kind
from nexus_audit.domain.policy import parse_policy
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.history.store import AccountState, Store
from nexus_audit.metrics import Snapshot, build_snapshot
from nexus_audit.metrics.snapshot import combine_snapshots
from nexus_audit.service.runtime import Service
from tests.test_queries import PRICES, T0
from tests.test_store import bucket, crawl, inst

ACCOUNTS = ("acme", "beta", "core")
POLICY = parse_policy(b"""
[baseline]
allowed_regions = ["eu-1", "us-1"]
required_tags = ["team"]
max_public_bucket_size = "5GB"
max_stopped = "2h"
[[exceptions]]
bucket = "b-beta-1"
reason = "reviewed"
owner = "sec@example.com"
expires = 2026-03-01T06:00:00Z
""", "p.toml")
REGIONS = ("eu-1", "us-1", "ap-1")
STATUSES = ("running", "stopped", "pending")
ACCESS = ("private", "public", "public-read", "private")
KIND_SETS: tuple[tuple[Kind, ...], ...] = (("instances",), ("buckets",),
                                          ("instances", "buckets"))


def make_service(store: Store, clock: FakeClock) -> Service:
    """A Service over three accounts with both per-resource series and a policy."""
    settings = Settings(
        accounts=tuple(AccountConfig(name=n, api_key=Secret(f"nx_test_{n}")) for n in ACCOUNTS),
        db_path=store.path, per_instance_metrics=True, per_bucket_metrics=True)
    return Service(settings, store, PRICES, clock=clock, grace=0.0, policy=POLICY)


def same(a: Snapshot, b: Snapshot) -> bool:
    """Equal but for the generation."""
    return replace(a, generation=0) == replace(b, generation=0)


def only(snapshot: Snapshot, accounts: Collection[str]) -> Snapshot:
    """What ``snapshot`` shows of ``accounts`` (generation 0)."""
    def mine(key: str | tuple[str, ...]) -> bool:
        return (key if isinstance(key, str) else key[0]) in accounts

    changes: dict[str, Any] = {"generation": 0}
    for f in fields(snapshot):
        value = getattr(snapshot, f.name)
        if isinstance(value, Mapping):
            changes[f.name] = {k: v for k, v in value.items() if mine(k)}
        elif isinstance(value, tuple):
            changes[f.name] = tuple(r for r in value if mine(r))
    return replace(snapshot, **changes)


class Fleet:
    """Each account's instances and buckets, changed at random between crawls."""

    def __init__(self) -> None:
        self.instances: dict[str, dict[str, Instance]] = {a: {} for a in ACCOUNTS}
        self.buckets: dict[str, dict[str, Bucket]] = {a: {} for a in ACCOUNTS}
        self.serial = 0

    def churn(self, account: str, rng: random.Random) -> None:
        """Add, remove and change a few resources of ``account``."""
        insts, bkts = self.instances[account], self.buckets[account]
        for _ in range(rng.randint(0, 4)):
            self.serial += 1
            ident = f"i-{account}-{self.serial}"
            insts[ident] = inst(ident, status=rng.choice(STATUSES), region=rng.choice(REGIONS),
                                cpu=rng.choice((1, 2, 4)), plan=rng.choice(("micro", None)),
                                tags=rng.choice(('{}', '{"team":"x"}')))
        for ident in rng.sample(sorted(insts), k=min(len(insts), rng.randint(0, 2))):
            if rng.random() < 0.5:
                del insts[ident]
            else:
                insts[ident] = inst(ident, status=rng.choice(STATUSES),
                                    region=rng.choice(REGIONS))
        for _ in range(rng.randint(0, 2)):
            self.serial += 1
            ident = f"b-{account}-{self.serial % 4}"
            bkts[ident] = bucket(ident, access=rng.choice(ACCESS), region=rng.choice(REGIONS),
                                 size=rng.randint(1, 9) * 10**9)


STEPS = st.lists(st.tuples(
    st.sampled_from(ACCOUNTS),
    st.sampled_from(KIND_SETS),
    st.sampled_from(("rebuild", "rebuild", "together", "unmarked", "failed")),
    st.sampled_from((1, 7, 61, 150, 2000)),  # minutes since the previous crawl
    st.integers(0, 2**16)), min_size=1, max_size=7)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=STEPS)
def test_rebuilds_per_account_equal_a_full_rebuild(
        tmp_path_factory: pytest.TempPathFactory,
        steps: list[tuple[str, tuple[Kind, ...], str, int, int]]) -> None:
    """After any sequence of commits across accounts (failed ones, several rebuilt
    together, one whose rebuild comes only after another kind's of the same account),
    the snapshot rebuilt for the accounts that committed equals, and renders the same
    /metrics bytes as, a full rebuild of every account at the same time."""
    store = Store(tmp_path_factory.mktemp("history") / "h.duckdb")
    store.migrate()
    clock = FakeClock(T0)
    incremental = make_service(store, clock)
    fleet = Fleet()
    for i, account in enumerate(ACCOUNTS):  # every account has a history to begin with
        fleet.churn(account, random.Random(i))
        crawl(store, T0, account=account, instances=list(fleet.instances[account].values()),
              buckets=list(fleet.buckets[account].values()))
    incremental.rebuild_snapshot()
    at = T0
    unmarked: list[tuple[str, tuple[Kind, ...]]] = []
    for n, (account, kinds, how, minutes, seed) in enumerate(steps):
        at += timedelta(minutes=minutes)
        fleet.churn(account, random.Random(seed))
        crawl(store, at, account=account, failed=how == "failed",
              instances=list(fleet.instances[account].values())
              if "instances" in kinds else None,
              buckets=list(fleet.buckets[account].values()) if "buckets" in kinds else None)
        clock.advance((at + timedelta(seconds=5) - clock.now()).total_seconds())
        if how == "unmarked":  # committed; its rebuild comes after the next one
            unmarked.append((account, kinds))
            continue
        incremental.mark(kinds, (account,))
        if how == "together" and n < len(steps) - 1:
            continue  # rebuilt with the next commit's rebuild
        marked = set(incremental._marks)
        got = incremental.rebuild_marked()
        # The accounts just rebuilt show their latest state whole, even one whose other
        # kind committed since without being marked yet (that mark comes below).
        expected = make_service(store, clock).rebuild_snapshot()
        assert only(got, marked) == only(expected, marked), f"step {n}: {account} {kinds}"
        for late in unmarked:
            incremental.mark(late[1], (late[0],))
        if unmarked:
            unmarked.clear()
            got = incremental.rebuild_marked()
        full = make_service(store, clock)
        expected = full.rebuild_snapshot()
        assert same(got, expected), f"step {n}: {account} {kinds} {how}"
        assert incremental.exporter.render("") == full.exporter.render("")
    for late in unmarked:
        incremental.mark(late[1], (late[0],))
    got = incremental.rebuild_marked()
    assert same(got, make_service(store, clock).rebuild_snapshot())


def test_a_commit_reads_and_folds_only_its_account(tmp_path: Path) -> None:
    """After one account's bucket poll, the rebuild reads that account's buckets alone
    (not the other accounts' records, not its own instances) and keeps the rest."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    clock = FakeClock(T0)
    for i, account in enumerate(ACCOUNTS):
        crawl(store, T0 + timedelta(minutes=i), account=account,
              instances=[inst(f"i-{account}-{k}") for k in range(5)],
              buckets=[bucket(f"b-{account}-{k}") for k in range(3)])
    clock.advance(600)
    service = make_service(store, clock)
    service.rebuild_snapshot()
    crawl(store, T0 + timedelta(minutes=9), account="beta",
          buckets=[bucket("b-beta-0", access="public")])
    with capture_logs() as logs:
        got = service.rebuild_snapshot(kinds=("buckets",), accounts=("beta",))
    (event,) = [e for e in logs if e["event"] == "metrics.rebuilt"]
    assert event["accounts"] == ["beta"]
    assert event["records"] == 1
    assert event["of_accounts"] == 3
    assert got.public_buckets == {"acme": 0, "beta": 1, "core": 0}
    assert same(got, make_service(store, clock).rebuild_snapshot())


def test_commits_marked_together_are_rebuilt_once(tmp_path: Path) -> None:
    """Commits marked before a rebuild starts are all folded by it; the rebuild queued
    behind it finds nothing left and installs nothing new."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    clock = FakeClock(T0 + timedelta(minutes=5))
    service = make_service(store, clock)
    service.rebuild_snapshot()
    for account in ACCOUNTS:
        crawl(store, T0, account=account, instances=[inst(f"i-{account}")])
        service.mark(("instances",), (account,))
    with capture_logs() as logs:
        first = service.rebuild_marked()
        second = service.rebuild_marked()
    assert second is first
    assert [e["accounts"] for e in logs if e["event"] == "metrics.rebuilt"] == [list(ACCOUNTS)]
    assert sorted(k[0] for k in first.instances) == list(ACCOUNTS)


def test_combined_parts_equal_one_fold_of_every_account(tmp_path: Path) -> None:
    """combine_snapshots over one part per account equals build_snapshot over all."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    fleet = Fleet()
    for i, account in enumerate(ACCOUNTS):
        fleet.churn(account, random.Random(i))
        fleet.churn(account, random.Random(i + 10))
        crawl(store, T0 + timedelta(minutes=i), account=account,
              instances=list(fleet.instances[account].values()),
              buckets=list(fleet.buckets[account].values()))
    states = store.latest()
    stale = {("acme", "stopped"): 2, ("beta", "error"): 1, ("zulu", "stopped"): 9}

    findings = {(s.account, "bucket.public", "high", "open"): 1 for s in states}

    def fold(chosen: list[AccountState], counts: Mapping[tuple[str, str], int] | None
             ) -> Snapshot:
        return build_snapshot(
            chosen, generation=3, instance_price=lambda i: float(i.cpu),
            bucket_price=lambda b: b.size_bytes / 1e9, per_instance=True, stale=counts,
            findings=findings)

    whole = fold(states, stale)
    parts = [fold([s], None) for s in states]
    assert combine_snapshots(parts, generation=3, stale=stale, findings=True) == whole


def test_stale_counts_follow_the_rule_at_every_moment(tmp_path: Path) -> None:
    """The stale counts recounted at each rebuild (a bisect over each account's streak
    starts) are those of the rule itself (is_stale over every streak), at any moment,
    exactly at a threshold too."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    fleet = Fleet()
    at = T0
    for step in range(6):
        for i, account in enumerate(ACCOUNTS):
            fleet.churn(account, random.Random(step * 10 + i))
            crawl(store, at, account=account,
                  instances=list(fleet.instances[account].values()))
        at += timedelta(hours=7 * step + 1)
    clock = FakeClock(at)
    service = make_service(store, clock)
    service.rebuild_snapshot()
    streaks = service.stale_candidates(store.latest())
    assert {s.status for s in streaks} == {"stopped", "pending"}
    limits = {"stopped": service.settings.stale_after,
              "pending": service.settings.pending_stale_after}
    moments = [at + timedelta(minutes=m) for m in range(0, 60 * 24 * 9, 97)]
    moments += [s.since + limits[s.status] + timedelta(microseconds=d)
                for s in streaks[:20] for d in (-1, 0, 1)]
    for now in moments:
        expected: Counter[tuple[str, str]] = Counter()
        for s in streaks:
            if is_stale(s.status, s.since, now, stale_after=limits["stopped"],
                        pending_stale_after=limits["pending"]):
                expected[(s.account, s.status)] += s.number
        assert service.stale_counts(now) == dict(expected), now


def test_many_accounts_rebuilt_together_are_read_in_turns(tmp_path: Path) -> None:
    """Twelve accounts' commits folded by one rebuild (read eight accounts at a time) give
    the full rebuild's snapshot."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    clock = FakeClock(T0 + timedelta(minutes=5))
    names = [f"acct-{i:02d}" for i in range(12)]
    settings = Settings(
        accounts=tuple(AccountConfig(name=n, api_key=Secret(f"nx_test_{n}")) for n in names),
        db_path=store.path, per_instance_metrics=True)  # records read: eight at a time
    service = Service(settings, store, PRICES, clock=clock, grace=0.0)
    service.rebuild_snapshot()
    for i, name in enumerate(names):
        crawl(store, T0, account=name, instances=[inst(f"i-{i}"), inst(f"j-{i}", status="stopped")],
              buckets=[bucket(f"b-{i}")])
        service.mark(("instances", "buckets"), (name,))
    with capture_logs() as logs:
        got = service.rebuild_marked()
    assert [e["records"] for e in logs if e["event"] == "metrics.rebuilt"] == [36]
    assert got.accounts == tuple(names)
    full = Service(settings, store, PRICES, clock=clock, grace=0.0).rebuild_snapshot()
    assert same(got, full)
