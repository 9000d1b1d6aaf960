"""Property-based tests (hypothesis) for what the other property tests leave out.

Already covered elsewhere: duration round trips (test_timeutil), cost accrual against a
brute-force hourly sum (test_queries_property), the simulator's cursor properties
(test_simulator_*). Here: windows from the CLI's and the endpoint's values; drift between
two random snapshots through the real store and query (applying the drift to the old
snapshot gives the new one); and the real crawler walking a random fleet against the
simulator while instances are created and deleted between its pages.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from nexus_audit.api import ApiStats, CloudNexusClient, RateBudget, RetryPolicy
from nexus_audit.config import AccountConfig, Secret
from nexus_audit.crawl.crawler import crawl_account
from nexus_audit.domain.model import Bucket, Instance
from nexus_audit.domain.timeutil import SystemClock, Window, format_duration, isoformat
from nexus_audit.errors import UsageError
from nexus_audit.history.store import Store
from nexus_audit.service.web import parse_report_query
from nexus_audit.simulator import Simulator, SimulatorConfig
from nexus_audit.simulator.fleet import REGIONS
from tests.test_queries import T0, H, report
from tests.test_store import crawl

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SLOW = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# -- windows -------------------------------------------------------------------------------

seconds_back = st.integers(min_value=0, max_value=5 * 365 * 86400)


@given(a=seconds_back, b=seconds_back)
def test_window_from_two_durations(a: int, b: int) -> None:
    """since=Xs, until=Ys back from now is the window [now-X, now-Y), or a usage error
    naming since when it would be empty; the CLI and /report agree on it."""
    since = format_duration(timedelta(seconds=a)) if a else "0s"
    until = format_duration(timedelta(seconds=b)) if b else None
    if a == 0 or a <= b:
        with pytest.raises(UsageError):
            Window.parse(since, until, NOW)
        return
    window = Window.parse(since, until, NOW)
    assert window == Window(NOW - timedelta(seconds=a), NOW - timedelta(seconds=b))
    assert window.length == timedelta(seconds=a - b)
    query = {"since": since, **({"until": until} if until else {})}
    assert parse_report_query(query, accounts=(), now=NOW).window == window


moments = st.integers(min_value=-10 * 365 * 86400, max_value=0).map(
    lambda s: NOW + timedelta(seconds=s))


@given(start=moments, end=moments, offset=st.integers(min_value=-12, max_value=14))
def test_window_from_iso_times_in_any_offset(start: datetime, end: datetime,
                                             offset: int) -> None:
    """ISO times written in any UTC offset give the same UTC window; isoformat round-trips."""
    zone = timezone(timedelta(hours=offset))
    since, until = start.astimezone(zone).isoformat(), end.astimezone(zone).isoformat()
    if start >= end:
        with pytest.raises(UsageError):
            Window.parse(since, until, NOW)
        return
    window = Window.parse(since, until, NOW)
    assert window == Window(start, end)
    assert Window.parse(str(isoformat(window.since)), isoformat(window.until), NOW) == window


# -- drift between two random snapshots ----------------------------------------------------

IDS = tuple(f"i-{n}" for n in range(6))
BUCKET_IDS = tuple(f"b-{n}" for n in range(4))
instances = st.lists(st.builds(
    lambda i, name, status, region, shape, plan, tags: Instance(
        i, name, status, region, shape[0], shape[1], plan,
        json.dumps(tags, sort_keys=True, separators=(",", ":")), "2026-01-01T00:00:00Z",
        "{}"),
    st.sampled_from(IDS), st.sampled_from(("web", "db", "batch")),
    st.sampled_from(("running", "stopped", "pending")), st.sampled_from(("eu-1", "us-1")),
    st.sampled_from(((1, 1.0), (2, 4.0), (4, 16.0))), st.sampled_from((None, "micro")),
    st.dictionaries(st.sampled_from(("env", "team")), st.sampled_from(("a", "b")))),
    max_size=len(IDS), unique_by=lambda r: r.id)
buckets = st.lists(st.builds(
    lambda i, access, region, size: Bucket(i, region, size, access, "2026-01-01T00:00:00Z",
                                           "{}", "{}"),
    st.sampled_from(BUCKET_IDS), st.sampled_from(("private", "public", "public-read")),
    st.sampled_from(("eu-1", "us-1")), st.integers(min_value=0, max_value=10**12)),
    max_size=len(BUCKET_IDS), unique_by=lambda r: r.id)

INSTANCE_FIELDS = ("name", "status", "region", "cpu", "memory_gb", "plan", "tags")
BUCKET_FIELDS = ("access", "region")


def drift_view(record: Instance | Bucket) -> dict[str, Any]:
    """The drift-relevant fields of a record, typed as the report types them."""
    if isinstance(record, Instance):
        view = {f: getattr(record, f) for f in INSTANCE_FIELDS}
        view["tags"] = json.loads(record.tags)
        return view
    return {f: getattr(record, f) for f in BUCKET_FIELDS}


def apply_drift(old: dict[str, dict[str, Any]], new_added: dict[str, dict[str, Any]],
                drift: Sequence[Any], kind: str) -> dict[str, dict[str, Any]]:
    """``old`` with the report's drift entries of ``kind`` applied (added records taken
    from ``new_added``, since an "added" entry names only the id)."""
    out = {k: dict(v) for k, v in old.items()}
    for d in drift:
        if d.kind != kind:
            continue
        if d.change == "removed":
            assert d.id in out
            del out[d.id]
        elif d.change == "added":
            assert d.id not in out
            out[d.id] = dict(new_added[d.id])
        else:
            assert d.field is not None
            assert out[d.id][d.field] == d.old
            out[d.id][d.field] = d.new
    return out


@SLOW
@given(old_i=instances, new_i=instances, old_b=buckets, new_b=buckets,
       failed_between=st.booleans())
def test_drift_applied_to_the_old_snapshot_gives_the_new_one(
        old_i: list[Instance], new_i: list[Instance], old_b: list[Bucket],
        new_b: list[Bucket], failed_between: bool) -> None:
    """Two random snapshots committed through the store: the report's drift, applied to
    the first, gives the second (instances and buckets); a failed crawl between them
    changes nothing; bucket size alone is never drift."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "d.duckdb")
        store.migrate()
        crawl(store, T0 + H, instances=old_i, buckets=old_b)
        if failed_between:
            crawl(store, T0 + 2 * H, instances=[], buckets=[], failed=True)
        crawl(store, T0 + 3 * H, instances=new_i, buckets=new_b)
        r = report(store, T0 + 2 * H, T0 + 4 * H)
    assert {d.observed_at for d in r.drift} <= {T0 + 3 * H}
    for kind, old, new in (("instance", old_i, new_i), ("bucket", old_b, new_b)):
        old_view = {x.id: drift_view(x) for x in old}
        new_view = {x.id: drift_view(x) for x in new}
        assert apply_drift(old_view, new_view, r.drift, kind) == new_view
        entries = [(d.id, d.field) for d in r.drift if d.kind == kind]
        assert len(entries) == len(set(entries))  # one entry per id and field


# -- pagination under churn through the real crawler ---------------------------------------

#: Per example: creates and deletes done, and pages requested after the first of them
#: (the last test checks the churn really happens mid-walk).
CHURNED: list[tuple[int, int]] = []
_op = st.one_of(st.tuples(st.just("create"), st.sampled_from(REGIONS)),
                st.tuples(st.just("delete"), st.integers(min_value=0, max_value=10**6)))
# Operations after each answer; the first answer always brings at least one, so every
# example churns while pages are still to come (the fleets below span several pages).
ops = st.tuples(st.lists(_op, min_size=1, max_size=6),
                st.lists(st.lists(_op, max_size=6), max_size=11)).map(
    lambda first_rest: [first_rest[0], *first_rest[1]])


async def _crawl_under_churn(size: int, page_ops: list[list[tuple[str, Any]]],
                             fan_out: bool) -> None:
    sim = Simulator(SimulatorConfig(instances=size, buckets=0, seed=size))
    await sim.start()
    try:
        before = set(sim.fleet.instance_ids())
        deleted: set[str] = set()
        created: set[str] = set()
        pages = iter(page_ops)
        serial = iter(range(10**6))

        later_pages = 0  # continuation pages requested after the first operation

        async def count_pages(session: aiohttp.ClientSession, ctx: Any,
                              params: aiohttp.TraceRequestStartParams) -> None:
            nonlocal later_pages
            if (created or deleted) and "cursor" in params.url.query:
                later_pages += 1

        async def churn(session: aiohttp.ClientSession, ctx: Any,
                        params: aiohttp.TraceRequestEndParams) -> None:
            # Between pages: after each answer, before the next request.
            for op, arg in next(pages, []):
                ids = sim.fleet.instance_ids()
                if op == "create":
                    created.add(sim.add_instance(name=f"new-{next(serial)}", region=arg).id)
                elif ids:
                    victim = ids[arg % len(ids)]
                    sim.delete_instance(victim)
                    deleted.add(victim)

        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(churn)
        trace.on_request_start.append(count_pages)
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            account = AccountConfig(name="sim", api_url=sim.url, api_key=Secret(sim.key))
            client = CloudNexusClient(account, session, RateBudget(60_000, clock=SystemClock()),
                                      stats=ApiStats(), timeout=5.0, clock=SystemClock(),
                                      rng=random.Random(1), policy=RetryPolicy(base_delay=0.01))
            seen: list[str] = []

            class Sink:
                def add_instances(self, batch: Sequence[Instance]) -> None:
                    seen.extend(r.id for r in batch)

                def add_buckets(self, batch: Sequence[Bucket]) -> None:
                    raise AssertionError("only instances are crawled")

            with capture_logs() as logs:
                summary = await crawl_account(client, "sim", Sink(), kinds=("instances",),
                                              previous_regions=REGIONS if fan_out else (),
                                              clock=SystemClock(), batch_size=37)
        assert summary.status == "succeeded", summary.error
        assert len(seen) == len(set(seen))
        assert not [e for e in logs if e["event"] == "crawl.duplicates"]  # none seen twice
        assert before - deleted <= set(seen)  # every instance there throughout, collected
        assert set(seen) <= before | created  # and nothing that never existed
        CHURNED.append((len(created) + len(deleted), later_pages))
        # The fleet really changed while the walk still had pages to fetch.
        assert len(created) + len(deleted) >= 1
        assert later_pages >= 1
    finally:
        await sim.stop()


@SLOW
@given(size=st.integers(min_value=250, max_value=450), page_ops=ops, fan_out=st.booleans())
def test_crawl_under_random_creates_and_deletes_returns_the_stable_fleet_once(
        size: int, page_ops: list[list[tuple[str, Any]]], fan_out: bool) -> None:
    """A random fleet of several pages, with instances created and deleted between the
    crawler's pages (single chain or region fan-out, where each region's chain spans
    pages too): every instance that existed throughout is returned exactly once, and
    nothing that never existed."""
    asyncio.run(_crawl_under_churn(4 * size if fan_out else size, page_ops, fan_out))


def test_the_churn_property_really_churns() -> None:
    """Guard on the property above: a crawl of 450 instances with operations scripted for
    its first pages does create and delete instances mid-walk."""
    CHURNED.clear()
    script = [[("create", REGIONS[0]), ("delete", 7)]] * 4
    asyncio.run(_crawl_under_churn(450, script, fan_out=False))
    asyncio.run(_crawl_under_churn(1800, script, fan_out=True))
    assert [done for done, _ in CHURNED] == [8, 8]
    assert all(pages >= 1 for _, pages in CHURNED)
