"""Scheduled crawls: job configuration, first run at start-up, no overlap, shutdown grace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobEvent
from structlog.testing import capture_logs

from nexus_audit.config import AccountConfig, Secret
from nexus_audit.domain.model import Kind
from nexus_audit.service.scheduler import (
    CrawlScheduler,
    JobSpec,
    first_run_offset,
    job_specs,
    judge_readiness,
)

PROD = AccountConfig(name="prod", api_key=Secret("nx_test_sk_prod"))
DEV = AccountConfig(name="dev", api_key=Secret("nx_test_sk_dev"))
INTERVALS: dict[Kind, timedelta] = {"instances": timedelta(hours=1),
                                    "buckets": timedelta(minutes=1)}
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEADLINE = 5.0  # seconds a test waits for something that should happen at once


class FakeCrawls:
    """Records crawl calls; each crawl waits for ``release`` unless it is already set."""

    def __init__(self, *, blocking: bool = False) -> None:
        self.calls: list[tuple[str, Kind]] = []
        self.finished: list[tuple[str, Kind]] = []
        self.cancelled: list[tuple[str, Kind]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not blocking:
            self.release.set()
        self.concurrent = 0
        self.max_concurrent = 0
        self.changed = asyncio.Condition()

    async def __call__(self, account: AccountConfig, kind: Kind) -> None:
        self.calls.append((account.name, kind))
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        self.started.set()
        try:
            await self.release.wait()
            self.finished.append((account.name, kind))
            async with self.changed:
                self.changed.notify_all()
        except asyncio.CancelledError:
            self.cancelled.append((account.name, kind))
            raise
        finally:
            self.concurrent -= 1


@pytest.fixture
async def stoppers() -> AsyncIterator[list[CrawlScheduler]]:
    """Schedulers to stop after the test, however it ended."""
    started: list[CrawlScheduler] = []
    yield started
    for scheduler in started:
        await scheduler.stop(grace=0)


def test_one_job_per_account_and_kind() -> None:
    """Each account gets an instances job and a buckets job with that kind's interval."""
    specs = job_specs([PROD, DEV], INTERVALS)
    assert [(s.account.name, s.kind, s.interval) for s in specs] == [
        ("prod", "instances", timedelta(hours=1)), ("prod", "buckets", timedelta(minutes=1)),
        ("dev", "instances", timedelta(hours=1)), ("dev", "buckets", timedelta(minutes=1)),
    ]
    assert len({s.job_id for s in specs}) == 4


def test_misfire_grace_is_half_the_interval_and_at_least_a_second() -> None:
    """A run may start up to half an interval late; never less than one second of grace."""
    assert JobSpec(PROD, "instances", timedelta(hours=1)).misfire_grace_seconds == 1800
    assert JobSpec(PROD, "buckets", timedelta(seconds=1)).misfire_grace_seconds == 1


def test_jobs_never_overlap_coalesce_and_run_at_start() -> None:
    """Every job has max_instances=1, coalesce, its interval, and a first run right away."""
    before = datetime.now(UTC)
    scheduler = CrawlScheduler(job_specs([PROD], INTERVALS), FakeCrawls())
    jobs = {job.id: job for job in scheduler.scheduler.get_jobs()}
    assert set(jobs) == {"crawl:prod:instances", "crawl:prod:buckets"}
    for job_id, interval in (("crawl:prod:instances", 3600), ("crawl:prod:buckets", 60)):
        job = jobs[job_id]
        assert job.max_instances == 1
        assert job.coalesce is True
        assert job.misfire_grace_time == interval // 2
        assert job.trigger.interval == timedelta(seconds=interval)
        assert before <= job.next_run_time <= datetime.now(UTC)


def test_accounts_first_runs_are_spread_and_keep_their_phase() -> None:
    """The i-th account's jobs first run i steps after start-up (a second, or the interval
    over the accounts when shorter), their triggers keeping that phase; one account runs
    at once."""
    assert first_run_offset(timedelta(hours=1), 0, 1) == timedelta(0)
    assert first_run_offset(timedelta(hours=1), 99, 100) == timedelta(seconds=99)
    assert first_run_offset(timedelta(seconds=60), 99, 100) == timedelta(seconds=59.4)
    accounts = [replace(PROD, name=f"a{i}") for i in range(3)]
    before = datetime.now(UTC)
    scheduler = CrawlScheduler(job_specs(accounts, INTERVALS), FakeCrawls())
    after = datetime.now(UTC)
    for i in range(3):
        for kind in ("instances", "buckets"):
            job = scheduler.scheduler.get_job(f"crawl:a{i}:{kind}")
            step = timedelta(seconds=1)  # both intervals are over 3 accounts x 1 s
            assert before + i * step <= job.next_run_time <= after + i * step
            assert job.trigger.start_date == job.next_run_time


async def test_start_runs_every_job_once_right_away(stoppers: list[CrawlScheduler]) -> None:
    """Starting the scheduler crawls each account and kind without waiting an interval
    (the second account a second after the first)."""
    crawls = FakeCrawls()
    scheduler = CrawlScheduler(job_specs([PROD, DEV], INTERVALS), crawls)
    stoppers.append(scheduler)
    scheduler.start()
    async with asyncio.timeout(DEADLINE), crawls.changed:
        await crawls.changed.wait_for(lambda: len(crawls.finished) == 4)
    assert sorted(crawls.calls) == [("dev", "buckets"), ("dev", "instances"),
                                    ("prod", "buckets"), ("prod", "instances")]


async def test_a_run_due_while_one_is_in_progress_is_skipped(
        stoppers: list[CrawlScheduler]) -> None:
    """A job whose crawl is still running is not started again (max_instances=1)."""
    crawls = FakeCrawls(blocking=True)
    scheduler = CrawlScheduler([JobSpec(PROD, "buckets", timedelta(minutes=1))], crawls)
    stoppers.append(scheduler)
    skipped = asyncio.Event()

    def on_skip(event: JobEvent) -> None:
        skipped.set()

    scheduler.scheduler.add_listener(on_skip, EVENT_JOB_MAX_INSTANCES)
    scheduler.start()
    async with asyncio.timeout(DEADLINE):
        await crawls.started.wait()
        # Make the job due again now, while its first crawl still runs.
        scheduler.scheduler.modify_job("crawl:prod:buckets", next_run_time=datetime.now(UTC))
        await skipped.wait()
    assert crawls.calls == [("prod", "buckets")]
    assert crawls.max_concurrent == 1


async def test_stop_lets_a_crawl_finish_within_the_grace(stoppers: list[CrawlScheduler]) -> None:
    """A crawl in progress that finishes within the grace period completes normally."""
    crawls = FakeCrawls(blocking=True)
    scheduler = CrawlScheduler([JobSpec(PROD, "instances", timedelta(hours=1))], crawls)
    stoppers.append(scheduler)
    scheduler.start()
    async with asyncio.timeout(DEADLINE):
        await crawls.started.wait()
        stopping = asyncio.create_task(scheduler.stop(grace=DEADLINE))
        await asyncio.sleep(0)  # stop() is now waiting for the crawl
        assert not stopping.done()
        crawls.release.set()
        await stopping
    assert crawls.finished == [("prod", "instances")]
    assert crawls.cancelled == []
    assert not scheduler.scheduler.running


async def test_stop_cancels_a_crawl_that_outlives_the_grace(
        stoppers: list[CrawlScheduler]) -> None:
    """A crawl still running when the grace ends is cancelled, and stop() returns."""
    crawls = FakeCrawls(blocking=True)
    scheduler = CrawlScheduler([JobSpec(PROD, "instances", timedelta(hours=1))], crawls)
    stoppers.append(scheduler)
    scheduler.start()
    async with asyncio.timeout(DEADLINE):
        await crawls.started.wait()
        with capture_logs() as logs:
            await scheduler.stop(grace=0.01)
    assert crawls.cancelled == [("prod", "instances")]
    assert crawls.finished == []
    assert scheduler.running == ()
    assert any(e["event"] == "crawl.abandoned" and e["account"] == "prod" for e in logs)


async def test_no_crawl_starts_after_stop(stoppers: list[CrawlScheduler]) -> None:
    """Once stopping, a job that fires anyway does not crawl."""
    crawls = FakeCrawls()
    spec = JobSpec(PROD, "buckets", timedelta(minutes=1))
    scheduler = CrawlScheduler([spec], crawls)
    await scheduler.stop(grace=0)
    await scheduler._run(spec)
    assert crawls.calls == []


async def test_a_crashing_crawl_is_logged_and_keeps_its_schedule(
        stoppers: list[CrawlScheduler]) -> None:
    """An unexpected exception in a crawl is logged as crawl.crashed; the job stays."""
    spec = JobSpec(PROD, "buckets", timedelta(minutes=1))

    async def crash(account: AccountConfig, kind: Kind) -> None:
        raise RuntimeError("boom")

    scheduler = CrawlScheduler([spec], crash)
    scheduler._accepting = True
    with capture_logs() as logs:
        await scheduler._run(spec)
    assert [e["event"] for e in logs] == ["crawl.crashed"]
    assert scheduler.scheduler.get_job(spec.job_id) is not None
    assert scheduler.running == ()


def test_ready_when_every_kind_succeeded_within_twice_its_interval() -> None:
    """Ready only if each account's instances and buckets succeeded within 2 x interval."""
    fresh = {("prod", "instances"): NOW - timedelta(minutes=90),
             ("prod", "buckets"): NOW - timedelta(seconds=110)}
    verdict = judge_readiness(fresh, ["prod"], INTERVALS, NOW)
    assert verdict.ready
    assert verdict.accounts["prod"] == {"ready": True, "instances": "ok", "buckets": "ok"}


def test_not_ready_names_the_stale_or_missing_kind() -> None:
    """An old bucket poll or a missing crawl makes the account not ready, with a reason."""
    stale = {("prod", "instances"): NOW - timedelta(minutes=10),
             ("prod", "buckets"): NOW - timedelta(minutes=3)}
    verdict = judge_readiness(stale, ["prod", "dev"], INTERVALS, NOW)
    assert not verdict.ready
    assert verdict.accounts["prod"]["instances"] == "ok"
    assert "older than 2m" in verdict.accounts["prod"]["buckets"]
    assert verdict.accounts["dev"]["instances"] == "no successful instances crawl yet"


def test_no_accounts_is_ready() -> None:
    """With no account to crawl there is nothing to wait for."""
    assert judge_readiness({}, [], INTERVALS, NOW).ready
