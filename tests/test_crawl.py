"""crawl_account and crawl_and_commit against an in-memory API (aioresponses callbacks)."""

from __future__ import annotations

import asyncio
import gc
import random
import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from structlog.testing import capture_logs

from nexus_audit.api import ApiStats, CloudNexusClient, RateBudget
from nexus_audit.config import AccountConfig, Secret
from nexus_audit.crawl.crawler import _run_all, crawl_account, crawl_and_commit, mismatch_note
from nexus_audit.crawl.progress import CrawlProgress
from nexus_audit.domain.model import Bucket, CrawlSummary, Instance, Kind
from nexus_audit.domain.timeutil import FakeClock

INSTANCES = re.compile(r"^http://api\.test/v2/instances(\?.*)?$")
BUCKETS = re.compile(r"^http://api\.test/v2/buckets(\?.*)?$")
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")


def instance(n: int, region: str) -> dict[str, Any]:
    """One API instance item."""
    return {"id": f"inst_{n:05d}", "name": f"web-{n}", "status": "running", "region": region,
            "cpu": 2, "memory_gb": 4, "created_at": "2025-01-01T00:00:00Z"}


class FakeApi:
    """Keyset-paged /instances (with region filter) and unpaged /buckets, in memory."""

    def __init__(self, n: int, regions: Sequence[str] = REGIONS, buckets: int = 3) -> None:
        self.instances = [instance(i, regions[i % len(regions)]) for i in range(n)]
        self.buckets = [{"id": f"bk_{i}", "region": "eu-west-1", "size_bytes": 10 * i,
                         "access": "private"} for i in range(buckets)]
        self.queries: list[dict[str, str]] = []
        self.total_offset = 0
        self.overlap = 0  # items of the previous page repeated at the start of each page
        self.hook: Any = None  # called before each /instances page is cut

    def instances_cb(self, url: Any, **kwargs: Any) -> CallbackResult:
        query = dict(url.query)
        self.queries.append(query)
        if self.hook is not None:
            self.hook(query)
        region = query.get("region")
        items = sorted((i for i in self.instances if region in (None, i["region"])),
                       key=lambda i: str(i.get("id", "")))
        limit = int(query["limit"])
        after = query.get("cursor")
        start = 0 if after is None else next(
            (k for k, i in enumerate(items) if str(i.get("id", "")) > after), len(items))
        start = max(0, start - self.overlap) if after is not None else 0
        chunk = items[start:start + limit]
        more = start + limit < len(items)
        return CallbackResult(payload={
            "instances": chunk,
            "pagination": {"next_cursor": chunk[-1]["id"] if more else None,
                           "total": len(items) + self.total_offset},
        })

    def buckets_cb(self, url: Any, **kwargs: Any) -> CallbackResult:
        return CallbackResult(payload={"buckets": self.buckets})

    def install(self, mock: aioresponses) -> None:
        """Route the mock's requests here."""
        mock.get(INSTANCES, callback=self.instances_cb, repeat=True)
        mock.get(BUCKETS, callback=self.buckets_cb, repeat=True)


class ListSink:
    """A CrawlSink that keeps what it is given."""

    def __init__(self) -> None:
        self.instances: list[Instance] = []
        self.buckets: list[Bucket] = []
        self.batches: list[int] = []
        self.discarded = False

    def add_instances(self, batch: Sequence[Instance]) -> None:
        self.batches.append(len(batch))
        self.instances.extend(batch)

    def add_buckets(self, batch: Sequence[Bucket]) -> None:
        self.buckets.extend(batch)

    def discard(self) -> None:
        self.discarded = True


@pytest.fixture
def mock() -> AsyncIterator[aioresponses]:
    """Intercept every aiohttp request."""
    with aioresponses() as m:
        yield m


@pytest.fixture
def clock() -> FakeClock:
    """Fake time."""
    return FakeClock()


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[CloudNexusClient]:
    """A client on a fake clock."""
    account = AccountConfig(name="acme", api_url="http://api.test/v2",
                            api_key=Secret("nx_test_sk_crawl"))
    async with aiohttp.ClientSession() as session:
        yield CloudNexusClient(account, session, RateBudget(1000, clock=clock), stats=ApiStats(),
                               clock=clock, rng=random.Random(1))


async def test_complete_crawl_streams_batches(client: CloudNexusClient, mock: aioresponses,
                                              clock: FakeClock) -> None:
    """Every record reaches the sink once, in bounded batches, with the fewest requests."""
    api = FakeApi(230)
    api.install(mock)
    sink = ListSink()
    progress = CrawlProgress(account="acme")
    with capture_logs() as logs:
        summary = await crawl_account(client, "acme", sink, clock=clock, batch_size=50,
                                      progress=progress)
    assert summary.status == "succeeded"
    assert summary.error is None
    assert sorted(i.id for i in sink.instances) == sorted(i["id"] for i in api.instances)
    assert [b.id for b in sink.buckets] == ["bk_0", "bk_1", "bk_2"]
    assert sink.batches == [50, 50, 50, 50, 30]
    assert (summary.instances, summary.buckets) == (230, 3)
    assert summary.requests == 3 + 1
    assert summary.retries == 0
    assert summary.requests_by_endpoint == {"GET /buckets": {"200": 1},
                                            "GET /instances": {"200": 3}}
    assert summary.total_mismatch is None
    assert progress.records == {"instances": 230, "buckets": 3}
    assert progress.finished
    finished = [e for e in logs if e["event"] == "crawl.finished"]
    assert len(finished) == 1
    for key in ("account", "kinds", "instances", "buckets", "requests", "retries", "seconds",
                "total_mismatch"):
        assert key in finished[0]


async def test_only_the_requested_kinds(client: CloudNexusClient, mock: aioresponses,
                                        clock: FakeClock) -> None:
    """A bucket-only crawl sends no instance request."""
    api = FakeApi(10)
    api.install(mock)
    summary = await crawl_account(client, "acme", ListSink(), kinds=("buckets",), clock=clock)
    assert summary.kinds == ("buckets",)
    assert summary.buckets == 3
    assert summary.instances == 0
    assert api.queries == []


async def test_duplicate_ids_are_kept_once(client: CloudNexusClient, mock: aioresponses,
                                           clock: FakeClock) -> None:
    """Ids repeated across pages reach the sink once, and are logged with a count."""
    api = FakeApi(250)
    api.overlap = 2
    api.install(mock)
    sink = ListSink()
    with capture_logs() as logs:
        summary = await crawl_account(client, "acme", sink, kinds=("instances",), clock=clock)
    assert summary.status == "succeeded"
    assert summary.instances == 250
    assert len({i.id for i in sink.instances}) == len(sink.instances) == 250
    dup = next(e for e in logs if e["event"] == "crawl.duplicates")
    assert dup["duplicates"] == 4
    assert len(dup["sample"]) == 4


async def test_total_mismatch_is_recorded_but_succeeds(client: CloudNexusClient,
                                                       mock: aioresponses,
                                                       clock: FakeClock) -> None:
    """A count that differs from pagination.total is noted; the complete walk still succeeds."""
    api = FakeApi(120)
    api.total_offset = 5
    api.install(mock)
    summary = await crawl_account(client, "acme", ListSink(), kinds=("instances",), clock=clock)
    assert summary.status == "succeeded"
    assert summary.total_mismatch == "instances: collected 120, API total 125"


def test_mismatch_note_accepts_either_total() -> None:
    """Churn moves the total: matching the first or the last page's total is no mismatch."""
    assert mismatch_note("instances", 10, 11, 10) is None
    assert mismatch_note("instances", 10, None, None) is None
    assert mismatch_note("instances", 9, 11, 10) == (
        "instances: collected 9, API total 11 at the start and 10 at the end")


async def test_invalid_record_fails_the_crawl(client: CloudNexusClient, mock: aioresponses,
                                              clock: FakeClock) -> None:
    """An item without an id fails the whole crawl and is counted as invalid."""
    api = FakeApi(50)
    del api.instances[7]["id"]
    api.install(mock)
    summary = await crawl_account(client, "acme", ListSink(), clock=clock)
    assert summary.status == "failed"
    assert summary.error_code == "INVALID_RECORD"
    assert summary.error is not None
    assert "\n" not in summary.error
    assert "without a valid 'id'" in summary.error
    assert client.stats.invalid_records == {"instances": 1}


async def test_api_error_fails_with_code_and_request_id(client: CloudNexusClient,
                                                        mock: aioresponses,
                                                        clock: FakeClock) -> None:
    """A 403 on buckets fails the crawl with the API's code and request id."""
    mock.get(INSTANCES, payload={"instances": [], "pagination": {"total": 0}}, repeat=True)
    mock.get(BUCKETS, status=403, payload={"error": {
        "code": "FORBIDDEN", "message": "IP not allowed", "request_id": "req_7"}})
    summary = await crawl_account(client, "acme", ListSink(), clock=clock)
    assert (summary.status, summary.error_code, summary.request_id) == (
        "failed", "FORBIDDEN", "req_7")
    assert summary.error is not None
    assert "allow-list" in summary.error


async def test_repeated_cursor_fails_the_crawl(client: CloudNexusClient, mock: aioresponses,
                                               clock: FakeClock) -> None:
    """A looping cursor is a failed crawl, not a hang."""
    mock.get(INSTANCES, payload={"instances": [instance(1, "eu-west-1")],
                                 "pagination": {"next_cursor": "loop", "total": 5}}, repeat=True)
    summary = await crawl_account(client, "acme", ListSink(), kinds=("instances",), clock=clock)
    assert (summary.status, summary.error_code) == ("failed", "REPEATED_CURSOR")


async def test_region_fan_out_walks_each_region(client: CloudNexusClient, mock: aioresponses,
                                                clock: FakeClock) -> None:
    """With previous regions, one chain per region plus one limit=1 probe, and it is complete."""
    api = FakeApi(700)
    api.install(mock)
    sink = ListSink()
    summary = await crawl_account(client, "acme", sink, kinds=("instances",),
                                  previous_regions=list(REGIONS), clock=clock)
    assert summary.status == "succeeded"
    assert summary.instances == 700
    regions = sorted({q["region"] for q in api.queries if "region" in q})
    assert regions == sorted(REGIONS)
    assert [q for q in api.queries if "region" not in q] == [{"limit": "1"}]
    # 234 + 233 + 233 per region: three pages each, plus the probe.
    assert summary.requests == 3 * 3 + 1


async def test_region_fan_out_falls_back_on_a_new_region(client: CloudNexusClient,
                                                         mock: aioresponses,
                                                         clock: FakeClock) -> None:
    """Instances in a region the previous crawl did not see trigger the unfiltered walk."""
    api = FakeApi(300, regions=(*REGIONS, "sa-east-1"))
    api.install(mock)
    sink = ListSink()
    with capture_logs() as logs:
        summary = await crawl_account(client, "acme", sink, kinds=("instances",),
                                      previous_regions=list(REGIONS), clock=clock)
    assert summary.status == "succeeded"
    assert summary.instances == 300
    assert sorted(i.id for i in sink.instances) == sorted(i["id"] for i in api.instances)
    assert any(e["event"] == "crawl.fanout_fallback" for e in logs)
    assert summary.total_mismatch is None


async def test_region_fan_out_tolerates_churn_when_the_end_totals_agree(
        client: CloudNexusClient, mock: aioresponses, clock: FakeClock) -> None:
    """A deletion between the probe and the region pages is settled by the end re-check."""
    api = FakeApi(300)
    state = {"deleted": False}

    def delete_once(query: dict[str, str]) -> None:
        if "region" in query and not state["deleted"]:
            state["deleted"] = True
            api.instances.pop()

    api.hook = delete_once
    api.install(mock)
    with capture_logs() as logs:
        summary = await crawl_account(client, "acme", ListSink(), kinds=("instances",),
                                      previous_regions=list(REGIONS), clock=clock)
    assert summary.status == "succeeded"
    assert summary.instances == 299
    assert not any(e["event"] == "crawl.fanout_fallback" for e in logs)
    assert [q for q in api.queries if "region" not in q] == [{"limit": "1"}, {"limit": "1"}]


async def test_cancellation_propagates(client: CloudNexusClient, mock: aioresponses,
                                       clock: FakeClock) -> None:
    """Cancelling a crawl re-raises CancelledError instead of returning a summary."""
    started = asyncio.Event()

    async def never(url: Any, **kwargs: Any) -> CallbackResult:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    mock.get(INSTANCES, callback=never, repeat=True)
    mock.get(BUCKETS, callback=never, repeat=True)
    task = asyncio.create_task(crawl_account(client, "acme", ListSink(), clock=clock))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class FakeStore:
    """The store's crawl API, recording calls (the real one is DuckDB)."""

    def __init__(self, regions: list[str]) -> None:
        self.regions = regions
        self.staged = ListSink()
        self.calls: list[str] = []
        self.summary: CrawlSummary | None = None

    def previous_regions(self, account: str) -> list[str]:
        self.calls.append(f"previous_regions {account}")
        return self.regions

    def begin_crawl(self, account: str, kinds: Sequence[Kind], started_at: datetime) -> ListSink:
        self.calls.append(f"begin {account} {','.join(kinds)}")
        return self.staged

    def commit(self, staged: ListSink, summary: CrawlSummary) -> int:
        self.calls.append("commit")
        self.summary = summary
        return 1

    def record_failure(self, summary: CrawlSummary, staged: ListSink | None = None) -> int:
        self.calls.append("record_failure")
        self.summary = summary
        return 2


async def test_crawl_and_commit_commits_a_complete_crawl(client: CloudNexusClient,
                                                         mock: aioresponses,
                                                         clock: FakeClock) -> None:
    """A succeeded crawl is committed, using the previous crawl's regions for fan-out."""
    api = FakeApi(120)
    api.install(mock)
    store = FakeStore(list(REGIONS))
    summary = await crawl_and_commit(client.account, store, client=client, clock=clock)
    assert summary.status == "succeeded"
    assert store.calls == ["previous_regions acme", "begin acme instances,buckets", "commit"]
    assert len(store.staged.instances) == 120
    assert any("region" in q for q in api.queries)


async def test_crawl_and_commit_records_a_failure(client: CloudNexusClient,
                                                  mock: aioresponses, clock: FakeClock) -> None:
    """A failed crawl is recorded as failed and never committed."""
    mock.get(BUCKETS, status=401, payload={"error": {"code": "UNAUTHORIZED",
                                                     "message": "bad", "request_id": "r"}})
    store = FakeStore([])
    account = AccountConfig(name="acme", api_url="http://api.test/v2",
                            api_key=Secret("nx_test_sk_crawl"))
    summary = await crawl_and_commit(account, store, client=client, kinds=("buckets",),
                                     clock=clock)
    assert summary.status == "failed"
    assert store.calls == ["begin acme buckets", "record_failure"]


async def test_crawl_and_commit_discards_on_cancel(client: CloudNexusClient,
                                                   mock: aioresponses, clock: FakeClock) -> None:
    """A cancelled crawl discards its staged records and commits nothing."""
    started = asyncio.Event()

    async def never(url: Any, **kwargs: Any) -> CallbackResult:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    mock.get(BUCKETS, callback=never)
    store = FakeStore([])
    task = asyncio.create_task(crawl_and_commit(client.account, store, client=client,
                                                kinds=("buckets",), clock=clock))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.staged.discarded
    assert "commit" not in store.calls


async def test_every_failure_of_concurrent_walks_is_retrieved() -> None:
    """When two walks fail together, the first failure is raised and the second is
    retrieved too: asyncio logs no "Task exception was never retrieved" traceback."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))

    async def fail(message: str) -> None:
        raise ValueError(message)

    try:
        with pytest.raises(ValueError, match="first"):
            await _run_all([fail("first"), fail("second")])
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert reported == []
