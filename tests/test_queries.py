"""The audit queries on small hand-built histories, answers worked out by hand.

Prices (``PRICES``) are chosen so the arithmetic is easy: micro 1.00/h, standard 2.00/h,
0.50 per vCPU-hour and 0.25 per GB-hour for instances matching no plan, and storage at
730 per GB-month, i.e. 1.00 per 10^9 bytes per hour.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nexus_audit.audit.report import Report, build_report
from nexus_audit.domain.pricing import Pricing, parse_pricing
from nexus_audit.domain.timeutil import Window
from nexus_audit.errors import NoDataError, UnknownAccountError, UsageError
from nexus_audit.history.sql import load_query, parameters, query_names
from nexus_audit.history.store import Store
from tests.test_store import bucket, crawl, inst

T0 = datetime(2026, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)

PRICES_TOML = b"""
name = "test-prices"
as_of = "2026-02-01"
currency = "EUR"
per_vcpu_hour = 0.5
per_gb_hour = 0.25
storage_gb_month = 730.0
[plans.micro]
cpu = 2
memory_gb = 2
hourly = 1.0
[plans.standard]
cpu = 4
memory_gb = 16
hourly = 2.0
"""
PRICES: Pricing = parse_pricing(PRICES_TOML, "test-prices.toml")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A migrated, empty store."""
    s = Store(tmp_path / "history.duckdb", lock_timeout=2.0)
    s.migrate()
    return s


def report(store: Store, since: datetime, until: datetime, *, max_gap: timedelta = 2 * H,
           stale_after: timedelta = 7 * D, accounts: list[str] | None = None) -> Report:
    """build_report with the test prices and one max_gap for both kinds."""
    return build_report(store, Window(since, until), accounts=accounts,
                        stale_after=stale_after, pending_stale_after=H,
                        max_gap_instances=max_gap, max_gap_buckets=max_gap,
                        pricing=PRICES, now=until)


def test_cost_gap_failed_crawl_and_drift(store: Store) -> None:
    """Compute accrues only while running and covered; a failed crawl changes nothing.

    Crawls at 0h, 1h, 2h (failed, saw only i-2), 3h, 8h; max_gap 2h; window [0h, 10h).
    Observations hold [0,1) [1,3) [3,5) [8,10): a gap [5h, 8h), 7 of 10 hours covered.
    i-1 (micro, 1.00/h) runs throughout: 7h = 7.00. i-2 (standard, 2.00/h) stopped until
    the 3h crawl, then running: [3,5) + [8,10) = 4h = 8.00. Drift: only i-2's status at
    3h (compared with 1h, the failed crawl ignored); i-1 is never "removed".
    """
    i1 = inst("i-1", plan="micro", region="eu-1")
    i2_stopped = inst("i-2", plan="standard", cpu=4, memory_gb=16, status="stopped",
                      region="us-1")
    i2 = i2_stopped._replace(status="running")
    crawl(store, T0, instances=[i1, i2_stopped])
    crawl(store, T0 + H, instances=[i1, i2_stopped])
    crawl(store, T0 + 2 * H, instances=[i2], failed=True)
    crawl(store, T0 + 3 * H, instances=[i1, i2])
    crawl(store, T0 + 8 * H, instances=[i1, i2])
    r = report(store, T0, T0 + 10 * H)
    d = r.to_json_dict()
    assert d["crawls"]["count"] == 5
    assert d["crawls"]["succeeded"] == 4
    assert d["crawls"]["failed"] == 1
    assert d["crawls"]["last_success"] == "2026-03-01T08:00:00Z"
    assert d["crawls"]["coverage"] == {
        "covered_seconds": 7 * 3600.0, "window_seconds": 10 * 3600.0, "ratio": 0.7,
        "gaps": [{"account": "acme", "kind": "instances", "start": "2026-03-01T05:00:00Z",
                  "end": "2026-03-01T08:00:00Z"}]}
    assert d["cost"]["currency"] == "EUR"
    assert d["cost"]["accrued"] == {"total": 15.0, "compute": 15.0, "storage": 0.0,
                                    "by_region": {"eu-1": 7.0, "us-1": 8.0}}
    assert d["cost"]["run_rate_hourly"] == {"total": 3.0, "compute": 3.0, "storage": 0.0,
                                            "by_region": {"eu-1": 1.0, "us-1": 2.0}}
    assert d["drift"] == [{"kind": "instance", "id": "i-2", "change": "changed",
                           "field": "status", "old": "stopped", "new": "running",
                           "observed_at": "2026-03-01T03:00:00Z", "account": "acme"}]
    assert d["inventory"]["instances"] == {"total": 2, "by_status": {"running": 2},
                                           "by_region": {"eu-1": 1, "us-1": 1}}
    assert d["pricing"] == {"name": "test-prices", "as_of": "2026-02-01",
                            "digest": PRICES.digest}


def test_drift_against_crawl_before_window(store: Store) -> None:
    """The first crawl in the window is compared with the previous one, before the window.

    Tags and plan changed (one row per field, tags as objects), one instance added, one
    removed, a bucket's access changed; the bucket's size change is usage, not drift.
    """
    crawl(store, T0, instances=[inst("i-1", tags='{"env":"dev"}'), inst("i-old")],
          buckets=[bucket("b-1", access="private", size=1)])
    crawl(store, T0 + H, instances=[inst("i-1", tags='{"env":"prod","team":"a"}', plan=None),
                                    inst("i-new")],
          buckets=[bucket("b-1", access="public-read", size=2)])
    d = report(store, T0 + 30 * timedelta(minutes=1), T0 + 2 * H).to_json_dict()
    at = "2026-03-01T01:00:00Z"
    assert d["drift"] == [
        {"kind": "bucket", "id": "b-1", "change": "changed", "field": "access",
         "old": "private", "new": "public-read", "observed_at": at, "account": "acme"},
        {"kind": "instance", "id": "i-1", "change": "changed", "field": "plan",
         "old": "micro", "new": None, "observed_at": at, "account": "acme"},
        {"kind": "instance", "id": "i-1", "change": "changed", "field": "tags",
         "old": {"env": "dev"}, "new": {"env": "prod", "team": "a"}, "observed_at": at,
         "account": "acme"},
        {"kind": "instance", "id": "i-new", "change": "added", "field": None, "old": None,
         "new": None, "observed_at": at, "account": "acme"},
        {"kind": "instance", "id": "i-old", "change": "removed", "field": None, "old": None,
         "new": None, "observed_at": at, "account": "acme"},
    ]


def test_state_that_began_crawls_before_the_window(store: Store) -> None:
    """What began crawls before the window is still answered from its first crawl.

    The report reads observations from the last crawl before the window on; anything
    older only by its crawl's time. Crawls at 0h..4h (both kinds; buckets alone at 2h15 and
    2h24), unchanged but for
    b-size (1 GB, 2 GB from 1h); window [2.5h, 5h), max_gap 2h: covered in full (2h holds
    to 3h, 4h to 5h). Compute: i-run 1.00/h x 2.5h = 2.50. Storage (1.00 per GB-hour):
    b-pub 1 GB and b-size 2 GB over 2.5h = 7.50. b-pub exposed since 0h and i-idle
    stopped since 0h, both "at least" (the first crawl saw them so). No drift inside.
    """
    instances = [inst("i-run"), inst("i-idle", status="stopped")]
    for hour in (0, 1, 2, 2.25, 2.4, 3, 4):
        # 2h15 and 2h24: bucket-only crawls, so the two streams' last crawls before the
        # window differ (2h and 2h24)
        crawl(store, T0 + hour * H, instances=None if hour in (2.25, 2.4) else instances,
              buckets=[bucket("b-pub", access="public-read"),
                       bucket("b-size", size=10**9 if hour == 0 else 2 * 10**9)])
    r = report(store, T0 + 2.5 * H, T0 + 5 * H, stale_after=H)
    assert r.crawls.coverage.ratio == 1.0
    assert r.cost.accrued.compute == pytest.approx(2.5)
    assert r.cost.accrued.storage == pytest.approx(7.5)
    assert [(e.id, e.start, e.end, e.at_least) for e in r.exposures] == [
        ("b-pub", T0, None, True)]
    assert [(p.id, p.public_since, p.at_least) for p in r.public_buckets] == [
        ("b-pub", T0, True)]
    assert [(s.id, s.stale_since, s.at_least) for s in r.stale_instances] == [
        ("i-idle", T0, True)]
    assert r.drift == ()


def test_first_crawl_is_not_drift(store: Store) -> None:
    """The first crawl of a stream has nothing to compare with: no 'added' flood."""
    crawl(store, T0, instances=[inst("i-1")], buckets=[bucket("b-1")])
    assert report(store, T0 - H, T0 + H).drift == ()


def test_exposures_public_buckets_and_storage(store: Store) -> None:
    """Exposure windows with start and end, fail-closed access, storage on covered time.

    Bucket crawls at 0h..3h, window [1.5h, 4h), max_gap 2h (the 3h crawl holds to 4h).
    b-1 (1 GB): private, public, public-read, private → one exposure [1h, 3h).
    b-2 (2 GB): 'authenticated-read', never seen before → exposed since 0h, ongoing; 0h
    is the first bucket crawl, so since at least then (at_least). b-1's began at the
    second crawl: not at_least.
    b-3: public at 0h only, private from 1h → its exposure ended before the window.
    Storage in the window: 2.5h x (1 + 2 + 0) GB x 1.00 = 7.50.
    """
    states = [("private", "private", "public"), ("public", "private", "private"),
              ("public-read", "private", "private"), ("private", "private", "private")]
    for hour, (a1, _, a3) in enumerate(states):
        crawl(store, T0 + hour * H, buckets=[
            bucket("b-1", access=a1, size=10**9),
            bucket("b-2", access="authenticated-read", size=2 * 10**9, region="us-1"),
            bucket("b-3", access=a3, size=0)])
    d = report(store, T0 + 90 * timedelta(minutes=1), T0 + 4 * H).to_json_dict()
    assert d["exposures"] == [
        {"id": "b-2", "access": "authenticated-read", "start": "2026-03-01T00:00:00Z",
         "end": None, "at_least": True, "account": "acme"},
        {"id": "b-1", "access": "public-read", "start": "2026-03-01T01:00:00Z",
         "end": "2026-03-01T03:00:00Z", "at_least": False, "account": "acme"},
    ]
    assert d["public_buckets"] == [
        {"id": "b-2", "region": "us-1", "access": "authenticated-read",
         "size_bytes": 2 * 10**9, "public_since": "2026-03-01T00:00:00Z", "at_least": True,
         "account": "acme"}]
    assert d["cost"]["accrued"]["storage"] == 7.5
    assert d["cost"]["accrued"]["by_region"] == {"eu-1": 2.5, "us-1": 5.0}
    assert d["cost"]["run_rate_hourly"]["storage"] == 3.0
    assert d["inventory"]["buckets"] == {"total": 3, "size_bytes": 3 * 10**9}


def test_stale_instances(store: Store) -> None:
    """Stale streaks judged from history, at_least when they began at the first crawl.

    Daily crawls 0d..9d, window [8d, 10d), stale_after 7d, pending 1h.
    i-s (micro): stopped since the first crawl (before the window) → stale since 0d,
    at_least. i-t (no plan, 4 vCPU/16 GB → priced as standard 2.00): stopped from 1d → 9d
    stopped, stale since 1d. i-u: stopped from 5d → only 5d, not stale. i-p (no plan,
    3 vCPU/5 GB → rates 3x0.5 + 5x0.25 = 2.75): stopped at 0d-7d, pending from 9d →
    pending for 1d ≥ 1h: stale since 9d (only the pending run counts).
    """
    for day in range(10):
        crawl(store, T0 + day * D, instances=[
            inst("i-s", status="stopped"),
            inst("i-t", plan=None, cpu=4, memory_gb=16,
                 status="running" if day < 1 else "stopped"),
            inst("i-u", status="running" if day < 5 else "stopped"),
            inst("i-p", plan=None, cpu=3, memory_gb=5,
                 status="stopped" if day < 8 else "running" if day < 9 else "pending")])
    r = report(store, T0 + 8 * D, T0 + 10 * D, max_gap=2 * D)
    assert r.to_json_dict()["stale_instances"] == [
        {"id": "i-s", "name": "i-s", "status": "stopped", "region": "eu-1",
         "stale_since": "2026-03-01T00:00:00Z", "at_least": True, "hourly_cost": 1.0,
         "account": "acme"},
        {"id": "i-t", "name": "i-t", "status": "stopped", "region": "eu-1",
         "stale_since": "2026-03-02T00:00:00Z", "at_least": False, "hourly_cost": 2.0,
         "account": "acme"},
        {"id": "i-p", "name": "i-p", "status": "pending", "region": "eu-1",
         "stale_since": "2026-03-10T00:00:00Z", "at_least": False, "hourly_cost": 2.75,
         "account": "acme"},
    ]


def test_plan_fallbacks_in_accrual(store: Store) -> None:
    """Running instances without a plan cost their cpu/memory plan, else the rates."""
    crawl(store, T0, instances=[inst("i-a", plan=None, cpu=2, memory_gb=2),
                                inst("i-b", plan=None, cpu=1, memory_gb=3),
                                inst("i-c", plan="unknown-plan", cpu=4, memory_gb=16)])
    crawl(store, T0 + H, instances=[inst("i-a", plan=None, cpu=2, memory_gb=2),
                                    inst("i-b", plan=None, cpu=1, memory_gb=3),
                                    inst("i-c", plan="unknown-plan", cpu=4, memory_gb=16)])
    # i-a = micro 1.00; i-b = 0.5 + 0.75 = 1.25; i-c = standard 2.00 → 4.25/h for 2h.
    d = report(store, T0, T0 + 2 * H).to_json_dict()
    assert d["cost"]["run_rate_hourly"]["compute"] == 4.25
    assert d["cost"]["accrued"]["compute"] == 8.5


def test_bucket_only_crawls_keep_instances(store: Store) -> None:
    """Bucket-only crawls neither remove instances nor cover instance time."""
    crawl(store, T0, instances=[inst("i-1")], buckets=[bucket("b-1")])
    for minute in range(1, 4):
        crawl(store, T0 + minute * timedelta(minutes=1), buckets=[bucket("b-1")])
    d = report(store, T0, T0 + 4 * H, max_gap=2 * H).to_json_dict()
    assert d["drift"] == []
    assert d["inventory"]["instances"]["total"] == 1
    # instances: one crawl holds [0h, 2h); buckets: the 3-minute crawl holds to 2h03m.
    assert d["crawls"]["coverage"]["gaps"] == [
        {"account": "acme", "kind": "buckets", "start": "2026-03-01T02:03:00Z",
         "end": "2026-03-01T04:00:00Z"},
        {"account": "acme", "kind": "instances", "start": "2026-03-01T02:00:00Z",
         "end": "2026-03-01T04:00:00Z"}]


def test_accounts_are_separate(store: Store) -> None:
    """One account's crawls never close another's history; --account filters."""
    crawl(store, T0, instances=[inst("i-1")], account="a")
    crawl(store, T0, instances=[inst("i-2")], account="b")
    crawl(store, T0 + H, instances=[inst("i-1")], account="a")
    d = report(store, T0, T0 + 2 * H, accounts=["b"]).to_json_dict()
    assert d["accounts"] == ["b"]
    assert d["inventory"]["instances"]["total"] == 1
    assert report(store, T0, T0 + 2 * H).to_json_dict()["accounts"] == ["a", "b"]


def test_no_data_errors(store: Store, tmp_path: Path) -> None:
    """Empty history, unknown account, window without crawls: NoDataError, clear text."""
    with pytest.raises(NoDataError, match="history is empty"):
        report(store, T0, T0 + H)
    crawl(store, T0, instances=[inst("i-1")])
    with pytest.raises(UnknownAccountError, match=r"'nope'.*known: acme"):
        report(store, T0, T0 + H, accounts=["nope"])
    with pytest.raises(NoDataError, match="no crawls between"):
        report(store, T0 + D, T0 + 2 * D)
    with pytest.raises(UsageError, match="max_gap"):
        build_report(store, Window(T0, T0 + H), stale_after=D, pending_stale_after=H,
                     max_gap_instances=timedelta(0), max_gap_buckets=H, pricing=PRICES,
                     now=T0 + H)


def test_queries_bind_parameters_only() -> None:
    """Every query is shipped, and none formats a value: values only as $parameters."""
    names = query_names()
    assert {"inventory", "cost_accrued", "run_rate", "drift", "public_buckets",
            "exposures", "stale_instances", "crawls", "coverage"} <= set(names)
    for name in names:
        sql = load_query(name)
        assert "{" not in sql.replace("{'field'", "")
        assert parameters(sql) <= {"accounts", "since", "until", "max_gap_instances",
                                   "max_gap_buckets", "stale_after", "pending_stale_after",
                                   "per_vcpu_hour", "per_gb_hour", "storage_gb_month",
                                   "bytes_per_gb", "hours_per_month",
                                   # findings*.sql: the policy's baselines (issue 9)
                                   "allowed_regions", "required_tags", "check_regions",
                                   "check_tags", "check_size", "check_stopped",
                                   "max_public_bytes", "max_stopped",
                                   # findings_times.sql: the exceptions' expiry times
                                   "expiries"}


def test_every_subpackage_ships() -> None:
    """pyproject lists packages explicitly (for nexus_audit.queries): none may be missing."""
    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts)
             for p in (root / "nexus_audit").rglob("__init__.py")}
    found |= {"nexus_audit.data"} if (root / "nexus_audit" / "data").is_dir() else set()
    assert found - listed == set()
    assert "nexus_audit.queries" in listed
