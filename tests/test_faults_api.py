"""API faults during a crawl, injected by the simulator: nothing lost, nothing half-seen.

Each test commits a good crawl, lets the fleet change, injects one scripted fault into
the next crawl and checks: a retryable fault is ridden out and the crawl is complete; any
other fault records the crawl as failed with the API's code, message and request id, and
the history still shows the fleet of the last good crawl (a failed crawl adds, closes and
removes nothing); the crawl after it succeeds; the exporter's metrics say what happened.

Time is fake where it would be waited for: the client, its rate budget and the crawl share
a FakeClock (a 429's Retry-After and the backoff pass instantly), and the simulator runs
on a ManualClock, so nothing matures between a crawl and the comparison with the fleet.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from nexus_audit.api import ApiStats, CloudNexusClient, RateBudget, RetryPolicy
from nexus_audit.config import AccountConfig, Secret
from nexus_audit.crawl.crawler import crawl_and_commit
from nexus_audit.domain.model import CrawlSummary, bucket_from_api, instance_from_api
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.history.store import Store
from nexus_audit.metrics import ApiCollector, CrawlStateCollector, SnapshotHolder, build_snapshot
from nexus_audit.simulator import ManualClock, Simulator
from tests.sim_fixtures import MakeSimulator

ACCOUNT = "sim"
SIM_START = 1_750_000_000.0
#: Backoff waits are on the fake clock, so the production-like policy costs no time.
POLICY = RetryPolicy(base_delay=0.5, max_delay=5.0)
#: Short enough that the SLOW fault (1 s) times a request out.
TIMEOUT = 0.3


@dataclass
class Rig:
    """A simulator, a store and one client on fake time: what each fault test drives."""

    sim: Simulator
    store: Store
    client: CloudNexusClient
    clock: FakeClock
    summaries: list[CrawlSummary] = field(default_factory=list)

    async def crawl(self) -> CrawlSummary:
        """One crawl of both kinds, committed or recorded as failed, a minute after the last."""
        self.clock.advance(60)
        summary = await crawl_and_commit(self.client.account, self.store, client=self.client,
                                         clock=self.clock)
        self.summaries.append(summary)
        return summary

    def fleet(self) -> tuple[set[Any], set[Any]]:
        """The simulator's fleet now, as the records a complete crawl would store."""
        return ({instance_from_api(i.to_json()) for i in self.sim.fleet.query_instances()},
                {bucket_from_api(b.to_json()) for b in self.sim.fleet.query_buckets()})

    def history(self) -> tuple[set[Any], set[Any]]:
        """The store's current versions (as of the last successful crawl of each kind)."""
        (state,) = self.store.latest()
        return set(state.instances), set(state.buckets)

    def crawl_rows(self) -> list[tuple[Any, ...]]:
        """Every crawl row: id, status, error code, error, request id."""
        with self.store.read() as con:
            return con.execute("SELECT crawl_id, status, error_code, error, request_id "
                               "FROM crawls ORDER BY crawl_id").fetchall()

    def versions_touched_by(self, crawl_id: int) -> int:
        """Version rows a crawl opened or closed, in every history table."""
        with self.store.read() as con:
            found = con.execute(
                """SELECT (SELECT count(*) FROM instance_versions
                           WHERE first_crawl = $c OR until_crawl = $c)
                        + (SELECT count(*) FROM bucket_versions
                           WHERE first_crawl = $c OR until_crawl = $c)
                        + (SELECT count(*) FROM bucket_sizes
                           WHERE first_crawl = $c OR until_crawl = $c)""",
                {"c": crawl_id}).fetchone()
        assert found is not None
        return int(found[0])

    def metrics(self) -> CollectorRegistry:
        """The exporter's crawl-state and API collectors over this rig (what /metrics shows)."""
        holder = SnapshotHolder()
        holder.swap(build_snapshot(self.store.latest(), generation=1))
        registry = CollectorRegistry(auto_describe=True)
        registry.register(CrawlStateCollector(holder))
        registry.register(ApiCollector({ACCOUNT: self.client.stats},
                                       {ACCOUNT: self.client.budget}))
        return registry


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One pooled client session."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def rig(make_simulator: MakeSimulator, session: aiohttp.ClientSession,
              tmp_path: Path) -> Rig:
    """350 instances (four pages), 25 buckets (one page), a store; one good crawl done."""
    sim = await make_simulator(instances=350, buckets=25, seed=11, clock=ManualClock(SIM_START))
    clock = FakeClock(datetime.fromtimestamp(SIM_START, UTC))
    account = AccountConfig(name=ACCOUNT, api_url=sim.url, api_key=Secret(sim.key),
                            rate_budget=1000)
    budget = RateBudget(1000, clock=clock, rng=random.Random(1))
    client = CloudNexusClient(account, session, budget, stats=ApiStats(), timeout=TIMEOUT,
                              clock=clock, rng=random.Random(2), policy=POLICY)
    store = Store(tmp_path / "faults.duckdb")
    store.migrate()
    r = Rig(sim, store, client, clock)
    first = await r.crawl()
    assert first.status == "succeeded", first.error
    assert r.history() == r.fleet()
    return r


def churn(sim: Simulator) -> None:
    """Change the fleet (adds, deletes, status changes) so a lost crawl would show."""
    for _ in range(3):
        sim.churn_step()


def after_for(path: str) -> int:
    """Requests a fault lets pass: the first page of instances (so it hits mid-walk); none
    of buckets (one page holds them all)."""
    return 1 if path == "/v2/instances" else 0


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist."""
    return registry.get_sample_value(name, {"account": ACCOUNT, **labels}) or 0.0


# -- faults the crawl must ride out ---------------------------------------------------------

#: (kind, path, times, retry reason counted, request code counted).
RETRYABLE = [
    pytest.param("500", "/v2/instances", 3, "500", "500", id="500s"),
    pytest.param("502", "/v2/instances", 2, "502", "502", id="502"),
    pytest.param("503", "/v2/buckets", 2, "503", "503", id="503-buckets"),
    pytest.param("429", "/v2/instances", 8, "429", "429", id="429-storm"),
    pytest.param("reset", "/v2/instances", 3, "connection", "error", id="resets"),
    pytest.param("slow", "/v2/instances", 2, "timeout", "error", id="timeouts"),
    pytest.param("truncated_json", "/v2/instances", 2, "invalid_json", "200",
                 id="truncated-json"),
    pytest.param("invalid_json", "/v2/buckets", 2, "invalid_json", "200", id="invalid-json"),
    pytest.param("no_pagination", "/v2/instances", 1, "protocol", "200", id="no-pagination"),
]


@pytest.mark.parametrize(("kind", "path", "times", "reason", "code"), RETRYABLE)
async def test_retryable_fault_mid_walk_still_gives_the_whole_fleet(
        rig: Rig, kind: str, path: str, times: int, reason: str, code: str) -> None:
    """A transient fault (mid-walk for instances) is retried: the crawl commits the fleet exactly,
    and the retries and answers show in the API metrics."""
    churn(rig.sim)
    endpoint = "GET " + path.removeprefix("/v2")
    before = rig.metrics()
    retries_before = sample(before, "nexus_audit_api_retries_total", endpoint=endpoint,
                            reason=reason)
    requests_before = sample(before, "nexus_audit_api_requests_total", endpoint=endpoint,
                             code=code)
    scripted = rig.sim.faults.script(kind, path=path, times=times, after=after_for(path),
                                     seconds=1.0)
    summary = await rig.crawl()
    assert summary.status == "succeeded", summary.error
    assert scripted.fired == times
    assert rig.history() == rig.fleet()
    assert summary.retries >= times
    metrics = rig.metrics()
    assert sample(metrics, "nexus_audit_crawl_success", kind="instances") == 1
    assert sample(metrics, "nexus_audit_api_retries_total", endpoint=endpoint,
                  reason=reason) - retries_before == times
    assert sample(metrics, "nexus_audit_api_requests_total", endpoint=endpoint,
                  code=code) - requests_before >= times


# -- faults that must fail the crawl, and leave history alone -------------------------------

@dataclass(frozen=True)
class Fatal:
    """A fault that fails the crawl, and what the failed crawl's row must say."""

    kind: str
    path: str
    error_code: str
    #: Words the stored error message must contain.
    words: tuple[str, ...]
    #: A fault that hits every matching request from then on (one for each concurrent region
    #: chain is retried away); otherwise it hits once.
    persistent: bool = False
    #: The HTTP status whose request id the row must quote (None: no API answer to quote).
    status: int | None = None
    invalid_kind: str | None = None


FATAL = [
    pytest.param(Fatal("403", "/v2/instances", "FORBIDDEN", ("Insufficient permissions",),
                       status=403), id="403"),
    pytest.param(Fatal("invalid_cursor", "/v2/instances", "INVALID_CURSOR",
                       ("Cursor is invalid",), status=400), id="cursor-rejected"),
    pytest.param(Fatal("revoke_key", "/v2/instances", "UNAUTHORIZED",
                       ("Invalid or expired API key",), status=401), id="key-revoked"),
    pytest.param(Fatal("500", "/v2/instances", "INTERNAL_ERROR", ("Internal server error",),
                       persistent=True, status=500), id="500-past-retries"),
    pytest.param(Fatal("429", "/v2/buckets", "RATE_LIMITED", ("429",), persistent=True,
                       status=429), id="429-past-allowance"),
    pytest.param(Fatal("reset", "/v2/instances", "TRANSPORT", ("unreachable",), persistent=True),
                 id="resets-past-retries"),
    pytest.param(Fatal("truncated_json", "/v2/instances", "TRANSPORT", ("not JSON",),
                       persistent=True, status=200), id="truncated-past-retries"),
    # A bad page or item came in a 200 answer: its request id is quoted.
    pytest.param(Fatal("no_pagination", "/v2/instances", "PROTOCOL", ("pagination",),
                       persistent=True, status=200), id="no-pagination-twice"),
    pytest.param(Fatal("missing_id", "/v2/instances", "INVALID_RECORD", ("without a valid 'id'",),
                       status=200, invalid_kind="instances"), id="item-without-id"),
    pytest.param(Fatal("wrong_types", "/v2/instances", "INVALID_RECORD", ("'cpu'",),
                       status=200, invalid_kind="instances"), id="instance-wrong-types"),
    pytest.param(Fatal("wrong_types", "/v2/buckets", "INVALID_RECORD", ("'size_bytes'",),
                       status=200, invalid_kind="buckets"), id="bucket-wrong-types"),
]


@pytest.mark.parametrize("fault", FATAL)
async def test_fatal_fault_records_a_failed_crawl_and_keeps_history(rig: Rig,
                                                                    fault: Fatal) -> None:
    """The crawl fails with the API's code, message and request id; history still shows the
    last good crawl's fleet, the failed crawl touched no version, the metrics show the
    failure, and the next crawl succeeds with the fleet as it is now."""
    good = rig.history()
    churn(rig.sim)
    assert rig.fleet() != good  # a lost or partial crawl would show
    scripted = rig.sim.faults.script(fault.kind, path=fault.path,
                                     times=10_000 if fault.persistent else 1,
                                     after=after_for(fault.path))
    summary = await rig.crawl()
    assert summary.status == "failed"
    assert scripted.fired >= 2 if fault.persistent else scripted.fired == 1
    rig.sim.faults.clear()
    assert summary.error_code == fault.error_code, summary.error
    assert summary.error is not None
    for word in fault.words:
        assert word in summary.error
    assert rig.sim.key not in summary.error

    rows = rig.crawl_rows()
    failed_id, status, code, error, request_id = rows[-1]
    assert (status, code, error, request_id) == ("failed", fault.error_code, summary.error,
                                                 summary.request_id)
    if fault.status is not None:
        # The id of the very answer that failed the crawl, as the server logged it.
        answered = {r.request_id for r in rig.sim.request_log.records()
                    if r.status == fault.status}
        assert request_id in answered
    assert rig.history() == good
    assert rig.versions_touched_by(failed_id) == 0

    metrics = rig.metrics()
    kinds = ("instances", "buckets") if fault.path != "/v2/buckets" else ("buckets",)
    for kind in kinds:
        # Both kinds were in the failed crawl: both show the failure.
        assert sample(metrics, "nexus_audit_crawl_success", kind=kind) == 0
    if fault.status is not None:
        endpoint = "GET " + fault.path.removeprefix("/v2")
        assert sample(metrics, "nexus_audit_api_requests_total", endpoint=endpoint,
                      code=str(fault.status)) >= 1
    if fault.invalid_kind is not None:
        assert sample(metrics, "nexus_audit_invalid_records_total",
                      kind=fault.invalid_kind) == 1

    if fault.kind == "revoke_key":
        rig.sim.add_key(rig.sim.key)  # the operator rotates the key back in
    following = await rig.crawl()
    assert following.status == "succeeded", following.error
    assert rig.history() == rig.fleet()
    assert sample(rig.metrics(), "nexus_audit_crawl_success", kind="instances") == 1
    statuses = [row[1] for row in rig.crawl_rows()]
    assert statuses == ["succeeded", "failed", "succeeded"]


async def test_fault_in_one_region_chain_fails_the_whole_fan_out(rig: Rig) -> None:
    """With region fan-out (one chain per region), a rejected cursor in one chain fails the
    crawl: the other regions' complete chains do not become history on their own."""
    good = rig.history()
    assert len(rig.store.previous_regions(ACCOUNT)) > 1  # the next crawl fans out
    churn(rig.sim)
    rig.sim.faults.script("invalid_cursor", path="/v2/instances", after=4)
    summary = await rig.crawl()
    assert summary.status == "failed"
    assert summary.error_code == "INVALID_CURSOR"
    assert rig.history() == good
    assert (await rig.crawl()).status == "succeeded"
    assert rig.history() == rig.fleet()
