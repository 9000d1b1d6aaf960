"""Crawls against the simulator on loopback: complete, within budget, through faults and churn.

Each test reads the simulator's request log: the budget holds in every sliding window
(as the server saw the requests) and the crawl's records equal the simulator's fleet.
Short rate windows keep every test to a second or two of real time.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from nexus_audit.api import ApiStats, CloudNexusClient, RateBudget, RetryPolicy
from nexus_audit.config import AccountConfig, Secret
from nexus_audit.crawl.crawler import crawl_account, crawl_and_commit
from nexus_audit.domain.model import KINDS, Bucket, CrawlSummary, Instance, Kind
from nexus_audit.domain.timeutil import SystemClock
from nexus_audit.history.store import Store
from nexus_audit.simulator import Simulator
from nexus_audit.simulator.fleet import REGIONS
from tests.sim_fixtures import MakeSimulator

#: Quick retries: the simulator's faults are one-offs.
FAST = RetryPolicy(base_delay=0.01, max_delay=0.05)


class ListSink:
    """A CrawlSink that keeps everything (tests compare it with the fleet)."""

    def __init__(self) -> None:
        self.instances: list[Instance] = []
        self.buckets: list[Bucket] = []

    def add_instances(self, batch: Sequence[Instance]) -> None:
        self.instances.extend(batch)

    def add_buckets(self, batch: Sequence[Bucket]) -> None:
        self.buckets.extend(batch)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One pooled client session."""
    async with aiohttp.ClientSession() as s:
        yield s


def client_for(sim: Simulator, session: aiohttp.ClientSession, *, per_minute: int = 60_000,
               window: float = 60.0, key: str | None = None) -> CloudNexusClient:
    """A client for ``sim`` with a budget of ``per_minute`` over ``window`` seconds."""
    clock = SystemClock()
    account = AccountConfig(name="sim", api_url=sim.url, api_key=Secret(key or sim.key),
                            rate_budget=per_minute)
    budget = RateBudget(per_minute, clock=clock, window=window, rng=random.Random(5))
    return CloudNexusClient(account, session, budget, stats=ApiStats(), timeout=5.0,
                            clock=clock, rng=random.Random(6), policy=FAST)


async def crawl(client: CloudNexusClient, *, kinds: Sequence[Kind] = KINDS,
                regions: Sequence[str] = ()) -> tuple[CrawlSummary, ListSink]:
    """One crawl into a fresh sink."""
    sink = ListSink()
    summary = await crawl_account(client, "sim", sink, kinds=kinds, previous_regions=regions,
                                  clock=SystemClock())
    return summary, sink


def max_in_window(times: list[float], window: float) -> int:
    """The most requests the server received inside any ``window`` seconds."""
    ordered = sorted(times)
    return max((bisect_right(ordered, t + window - 1e-6) - i for i, t in enumerate(ordered)),
               default=0)


def assert_complete(sim: Simulator, sink: ListSink) -> None:
    """The sink holds the simulator's fleet exactly: nothing lost, nothing twice."""
    ids = [i.id for i in sink.instances]
    assert len(ids) == len(set(ids))
    assert set(ids) == {i.id for i in sim.fleet.query_instances()}
    buckets = [b.id for b in sink.buckets]
    assert len(buckets) == len(set(buckets))
    assert set(buckets) == {b.id for b in sim.fleet.query_buckets()}


async def test_plain_crawl_is_complete_with_the_fewest_requests(
        make_simulator: MakeSimulator, session: aiohttp.ClientSession) -> None:
    """Without previous regions: ceil(n/100) instance pages plus one bucket request."""
    sim = await make_simulator(instances=450, buckets=30)
    summary, sink = await crawl(client_for(sim, session))
    assert summary.status == "succeeded"
    assert_complete(sim, sink)
    assert summary.requests == math.ceil(450 / 100) + 1
    assert len(sim.request_log) == summary.requests
    assert all("limit=100" in r.query for r in sim.request_log.records(path="/v2/instances"))


async def test_budget_holds_in_every_window_through_faults(
        make_simulator: MakeSimulator, session: aiohttp.ClientSession) -> None:
    """With latency and 500s, resets and broken bodies, the crawl completes within budget."""
    sim = await make_simulator(instances=1200, buckets=10, latency=0.005, latency_jitter=0.005,
                               fault_500=0.08, fault_reset=0.04, fault_malformed=0.04, seed=3)
    client = client_for(sim, session, per_minute=600, window=1.0)  # 10 a second
    summary, sink = await crawl(client, regions=REGIONS)
    assert summary.status == "succeeded", summary.error
    assert_complete(sim, sink)
    assert summary.retries > 0
    times = [r.time for r in sim.request_log.records()]
    assert len(times) == summary.requests  # every send went through the budget
    assert max_in_window(times, 1.0) <= 10
    assert summary.requests > 10
    assert summary.seconds >= 1.0  # the budget did bind


async def test_lowered_server_limit_is_obeyed_with_few_429s(
        make_simulator: MakeSimulator, session: aiohttp.ClientSession) -> None:
    """A key limited below our budget: complete, and fewer 429s than reset windows."""
    sim = await make_simulator(instances=1500, buckets=5, rate_limit=8, rate_window=1.0)
    client = client_for(sim, session, per_minute=6000, window=1.0)  # 100/s: the server binds
    summary, sink = await crawl(client, regions=REGIONS)
    assert summary.status == "succeeded", summary.error
    assert_complete(sim, sink)
    records = sim.request_log.records()
    windows = {math.floor(r.time) for r in records}
    rejected = sum(1 for r in records if r.status == 429)
    assert len(windows) >= 3  # 19 requests at 8 a second
    assert rejected < len(windows)


async def test_churn_between_pages_loses_nothing_that_stayed(
        make_simulator: MakeSimulator, session: aiohttp.ClientSession) -> None:
    """Instances present for the whole crawl are all collected, once, despite churn."""
    sim = await make_simulator(instances=800, latency=0.003, churn_interval=0.002, seed=9)
    before = {i.id for i in sim.fleet.query_instances()}
    summary, sink = await crawl(client_for(sim, session), kinds=("instances",))
    after = {i.id for i in sim.fleet.query_instances()}
    ids = [i.id for i in sink.instances]
    assert summary.status == "succeeded"
    assert before != after  # the fleet did change during the crawl
    assert len(ids) == len(set(ids))
    assert before & after <= set(ids)


async def test_region_fan_out_is_complete(make_simulator: MakeSimulator,
                                          session: aiohttp.ClientSession) -> None:
    """One chain per previous region, proven complete by the unfiltered total."""
    sim = await make_simulator(instances=900, buckets=4)
    with capture_logs() as logs:
        summary, sink = await crawl(client_for(sim, session), regions=REGIONS)
    assert summary.status == "succeeded"
    assert_complete(sim, sink)
    queries = [r.query for r in sim.request_log.records(path="/v2/instances")]
    assert {q for q in queries if "region=" not in q} == {"limit=1"}
    assert not any(e["event"] == "crawl.fanout_fallback" for e in logs)


async def test_region_fan_out_falls_back_on_a_new_region(
        make_simulator: MakeSimulator, session: aiohttp.ClientSession) -> None:
    """A region missing from the previous crawl is noticed and walked unfiltered."""
    sim = await make_simulator(instances=500)
    with capture_logs() as logs:
        summary, sink = await crawl(client_for(sim, session), regions=REGIONS[:-1])
    assert summary.status == "succeeded"
    assert_complete(sim, sink)
    assert any(r.region == REGIONS[-1] for r in sink.instances)
    assert any(e["event"] == "crawl.fanout_fallback" for e in logs)


async def test_invalid_record_fails_the_crawl(make_simulator: MakeSimulator,
                                              session: aiohttp.ClientSession) -> None:
    """An item without an id fails the crawl, whatever else arrived, quoting the request id
    of the very answer it came in (the second page)."""
    sim = await make_simulator(instances=300)
    sim.faults.script("missing_id", path="/v2/instances", after=1)
    client = client_for(sim, session)
    summary, _ = await crawl(client)
    assert summary.status == "failed"
    assert summary.error_code == "INVALID_RECORD"
    assert client.stats.invalid_records == {"instances": 1}
    pages = sim.request_log.records(path="/v2/instances")
    assert len(pages) == 2
    assert summary.request_id == pages[1].request_id


async def test_revoked_key_fails_with_the_api_message(make_simulator: MakeSimulator,
                                                      session: aiohttp.ClientSession) -> None:
    """A 401 mid-crawl fails it at once with the API's code and request id."""
    sim = await make_simulator(instances=300)
    sim.faults.script("revoke_key", path="/v2/instances", after=1)
    summary, _ = await crawl(client_for(sim, session), kinds=("instances",))
    assert summary.status == "failed"
    assert summary.error_code == "UNAUTHORIZED"
    assert summary.request_id is not None
    assert summary.error is not None
    assert "invalid or expired" in summary.error
    assert sim.key not in summary.error


async def test_crawl_and_commit_with_the_store(make_simulator: MakeSimulator,
                                               session: aiohttp.ClientSession,
                                               tmp_path: Path) -> None:
    """A crawl commits to DuckDB, and the next crawl fans out over the stored regions."""
    sim = await make_simulator(instances=400, buckets=6)
    store = Store(tmp_path / "audit.duckdb")
    store.migrate()
    client = client_for(sim, session)
    first = await crawl_and_commit(client.account, store, client=client, clock=SystemClock())
    assert first.status == "succeeded"
    assert store.previous_regions("sim") == sorted({i.region for i in sim.fleet.query_instances()})
    sim.request_log.clear()
    second = await crawl_and_commit(client.account, store, client=client, clock=SystemClock())
    assert second.status == "succeeded"
    assert second.instances == 400
    assert any("region=" in r.query for r in sim.request_log.records(path="/v2/instances"))
