"""serve's health never lies: a lost commit and a clock step back show in the metrics and
/readyz, against the simulator on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.model import CrawlSummary
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import StoreError
from nexus_audit.history.staging import StagedCrawl
from nexus_audit.history.store import Store
from nexus_audit.service.runtime import Service
from nexus_audit.service.scheduler import judge_readiness
from tests.sim_fixtures import MakeSimulator

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class RefusingStore(Store):
    """A store whose commits are refused once ``refuse`` is set; ``lost`` also refuses to
    record the failure (the file cannot be written at all)."""

    refuse = False
    lost = False

    def commit(self, staged: StagedCrawl, summary: CrawlSummary) -> int:
        """Refuse while ``refuse`` is set, else commit."""
        if self.refuse:
            staged.discard()
            raise StoreError(f"cannot write {self.path}: refused for the test")
        return super().commit(staged, summary)

    def record_failure(self, summary: CrawlSummary, staged: StagedCrawl | None = None) -> int:
        """Refuse while ``lost`` is set, else record."""
        if self.lost:
            raise StoreError(f"cannot write {self.path}: the disk is full")
        return super().record_failure(summary, staged)


@pytest.fixture
async def served(make_simulator: MakeSimulator, tmp_path: Path
                 ) -> AsyncIterator[tuple[Service, RefusingStore, FakeClock, TestClient[Any, Any]]]:
    """A Service over the simulator on a fake clock, crawling only when told, with its app."""
    sim = await make_simulator(instances=20, buckets=5)
    account = AccountConfig(name="sim", api_url=sim.url, api_key=Secret(sim.key))
    settings = Settings(accounts=(account,), db_path=tmp_path / "h.duckdb",
                        interval=timedelta(hours=1), bucket_interval=timedelta(minutes=1))
    store = RefusingStore(settings.db_path)
    store.migrate()
    clock = FakeClock(T0)
    service = Service(settings, store, load_pricing(None), clock=clock, grace=0.0)
    client = TestClient(TestServer(service.app()))
    await client.start_server()
    async with aiohttp.ClientSession() as session, service.crawling(session, scheduled=False):
        yield service, store, clock, client
    await client.close()


async def crawl_both(service: Service) -> None:
    """One crawl of each kind of the only account."""
    account = service.settings.accounts[0]
    await service.crawl(account, "instances")
    await service.crawl(account, "buckets")


def sample(service: Service, name: str, **labels: str) -> float | None:
    """A sample of the exporter's registry."""
    return service.exporter.registry.get_sample_value(name, {"account": "sim", **labels})


async def test_a_refused_commit_is_a_failed_crawl_everywhere(
        served: tuple[Service, RefusingStore, FakeClock, TestClient[Any, Any]]) -> None:
    """A complete crawl the store refuses is recorded as failed (COMMIT_REFUSED): success
    0, one more failed crawl, /readyz 503 naming it; the next commit makes it ready again."""
    service, store, clock, client = served
    await crawl_both(service)
    assert sample(service, "nexus_audit_crawl_success", kind="buckets") == 1
    assert (await client.get("/readyz")).status == 200
    clock.advance(60)
    store.refuse = True
    await service.crawl(service.settings.accounts[0], "buckets")
    assert sample(service, "nexus_audit_crawl_success", kind="buckets") == 0
    assert sample(service, "nexus_audit_crawls_total", kind="buckets", status="failed") == 1
    answer = await client.get("/readyz")
    assert answer.status == 503
    verdict = (await answer.json())["accounts"]["sim"]
    assert "refused by the store (COMMIT_REFUSED)" in verdict["buckets"]
    assert verdict["instances"] == "ok"
    with store.read() as con:
        assert con.execute("SELECT status, error_code, error FROM crawls ORDER BY crawl_id "
                           "DESC LIMIT 1").fetchone() == (
            "failed", "COMMIT_REFUSED",
            f"the store refused the commit: cannot write {store.path}: refused for the test")
    store.refuse = False
    clock.advance(60)
    await service.crawl(service.settings.accounts[0], "buckets")
    assert sample(service, "nexus_audit_crawl_success", kind="buckets") == 1
    assert (await client.get("/readyz")).status == 200


async def test_a_crawl_the_store_cannot_even_record_still_counts(
        served: tuple[Service, RefusingStore, FakeClock, TestClient[Any, Any]]) -> None:
    """When the store can record nothing (the disk is full), the crawl still counts as
    failed, crawl_success reads 0 and /readyz says why, until a crawl is recorded again."""
    service, store, clock, client = served
    await crawl_both(service)
    clock.advance(60)
    store.refuse = store.lost = True
    await service.crawl(service.settings.accounts[0], "instances")
    assert sample(service, "nexus_audit_crawl_success", kind="instances") == 0
    assert sample(service, "nexus_audit_crawls_total", kind="instances", status="failed") == 1
    answer = await client.get("/readyz")
    assert answer.status == 503
    reason = (await answer.json())["accounts"]["sim"]["instances"]
    assert reason.startswith("the last instances crawl could not be recorded: ")
    assert reason.endswith("refused for the test")  # why the commit failed
    store.refuse = store.lost = False
    clock.advance(60)
    await service.crawl(service.settings.accounts[0], "instances")
    assert sample(service, "nexus_audit_crawl_success", kind="instances") == 1
    assert (await client.get("/readyz")).status == 200


async def test_a_clock_step_back_is_corrected_counted_and_not_fresh(
        served: tuple[Service, RefusingStore, FakeClock, TestClient[Any, Any]]) -> None:
    """Crawls committed with the clock 30 days ahead: once it steps back, /readyz is not
    ready (a last success in the future is not fresh); the next crawls commit anyway, re-date
    the ones ahead (counted by nexus_audit_clock_skew_corrections_total) and it is ready."""
    service, _, clock, client = served
    assert sample(service, "nexus_audit_clock_skew_corrections_total", kind="buckets") is None
    clock.step_wall(T0 + timedelta(days=30))
    await crawl_both(service)
    assert sample(service, "nexus_audit_clock_skew_corrections_total", kind="buckets") == 0
    clock.step_wall(T0)
    answer = await client.get("/readyz")
    assert answer.status == 503
    verdict = (await answer.json())["accounts"]["sim"]
    assert verdict["buckets"].startswith("last success lies in the future: clock skew?")
    await crawl_both(service)
    assert sample(service, "nexus_audit_crawl_success", kind="buckets") == 1
    assert sample(service, "nexus_audit_clock_skew_corrections_total", kind="buckets") == 1
    assert sample(service, "nexus_audit_clock_skew_corrections_total", kind="instances") == 1
    assert sample(service, "nexus_audit_crawls_total", kind="buckets", status="failed") == 0
    assert (await client.get("/readyz")).status == 200


def test_readiness_tolerates_a_little_skew_but_not_a_future_success() -> None:
    """A last success a few seconds ahead (clocks of one host drift little) is fresh; one
    beyond the tolerance is not, and the verdict says so."""
    intervals = {"instances": timedelta(hours=1), "buckets": timedelta(minutes=1)}
    near = {("a", "instances"): T0 + timedelta(seconds=5), ("a", "buckets"): T0}
    assert judge_readiness(near, ["a"], intervals, T0).ready
    far = {("a", "instances"): T0 + timedelta(days=30), ("a", "buckets"): T0}
    verdict = judge_readiness(far, ["a"], intervals, T0)
    assert not verdict.ready
    assert verdict.accounts["a"]["instances"].startswith("last success lies in the future")
    assert verdict.accounts["a"]["buckets"] == "ok"
