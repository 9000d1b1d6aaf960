"""Scheduled crawls for ``serve``: one APScheduler 3 interval job per account and kind.

Instances and buckets are crawled by separate jobs (buckets are cheap and polled far more
often); both jobs of an account share that key's rate budget, which the crawl function
closes over. Each job runs first at start-up, never overlaps itself (``max_instances=1``),
and coalesces runs missed while the loop was busy into one, within a misfire grace of half
its interval.

With several accounts, their jobs of a kind are spread rather than fired together: the
``i``-th account (in the configuration's order) first runs ``i`` steps after start-up,
a step being :data:`SPREAD_STEP` or the interval over the accounts, whichever is shorter,
and keeps that phase. A hundred accounts' crawls then never all run, stage their records
and commit at the same instant (memory and the event loop would take the whole burst);
with one account nothing changes, and the last of a hundred starts within 100 s.

Shutdown is in two steps because APScheduler's asyncio executor cancels running jobs the
moment the scheduler shuts down: first :meth:`CrawlScheduler.stop` pauses the scheduler and
refuses new runs, waits up to a grace period for crawls in progress to finish and commit,
and cancels those still running (a cancelled crawl commits nothing); only then is the
scheduler itself shut down.

:func:`judge_readiness` is the pure rule behind ``/readyz``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from nexus_audit.config import AccountConfig
from nexus_audit.domain.model import KINDS, Kind
from nexus_audit.domain.timeutil import format_duration, isoformat
from nexus_audit.logs import get_logger
from nexus_audit.service.web import Readiness

log = get_logger(__name__)

#: Readiness allows this many intervals since the last success of each kind.
READY_INTERVALS: Final = 2
#: A last success this far after now is not fresh: the clock stepped back (or was ahead).
FUTURE_TOLERANCE: Final = timedelta(seconds=60)
#: The longest step between the first runs of consecutive accounts' jobs of a kind.
SPREAD_STEP: Final = timedelta(seconds=1)

CrawlFunction = Callable[[AccountConfig, Kind], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One scheduled job: crawl ``kind`` of ``account`` every ``interval``."""

    account: AccountConfig
    kind: Kind
    interval: timedelta
    #: How long after start-up the first run comes (later runs keep this phase).
    offset: timedelta = timedelta(0)

    @property
    def job_id(self) -> str:
        """A stable id, unique per account and kind."""
        return f"crawl:{self.account.name}:{self.kind}"

    @property
    def misfire_grace_seconds(self) -> int:
        """A run late by up to half an interval still happens; later ones are skipped."""
        return max(1, int(self.interval.total_seconds() // 2))


def job_specs(
    accounts: Iterable[AccountConfig], intervals: Mapping[Kind, timedelta]
) -> tuple[JobSpec, ...]:
    """The jobs for ``accounts``: one per account and kind, with that kind's interval, the
    accounts' first runs spread (:func:`first_run_offset`)."""
    chosen = list(accounts)
    return tuple(JobSpec(account, kind, intervals[kind],
                         first_run_offset(intervals[kind], i, len(chosen)))
                 for i, account in enumerate(chosen) for kind in KINDS)


def first_run_offset(interval: timedelta, index: int, count: int) -> timedelta:
    """How long after start-up the ``index``-th of ``count`` accounts first crawls a kind
    crawled every ``interval``: ``index`` steps of :data:`SPREAD_STEP`, or of the interval
    over ``count`` when that is shorter (so the runs stay spread within one interval)."""
    return min(SPREAD_STEP, interval / max(1, count)) * index


def judge_readiness(
    last_success: Mapping[tuple[str, str], datetime],
    accounts: Iterable[str],
    intervals: Mapping[Kind, timedelta],
    now: datetime,
    failures: Mapping[tuple[str, str], str] | None = None,
) -> Readiness:
    """Ready when every account's last success of each kind is within twice its interval,
    no later than now (beyond :data:`FUTURE_TOLERANCE`), and its last crawl was not lost
    to the store (``failures``: a reason by (account, kind)).

    ``accounts`` maps each name to ``{"ready": bool, "<kind>": reason-or-"ok"}``.
    """
    verdicts: dict[str, Any] = {}
    ready = True
    for name in accounts:
        verdict: dict[str, Any] = {"ready": True}
        for kind in KINDS:
            limit = READY_INTERVALS * intervals[kind]
            last = last_success.get((name, kind))
            failure = (failures or {}).get((name, kind))
            if failure is not None:
                verdict[kind] = failure
                verdict["ready"] = False
            elif last is None:
                verdict[kind] = f"no successful {kind} crawl yet"
                verdict["ready"] = False
            elif last - now > FUTURE_TOLERANCE:
                # A negative age is not fresh: nothing says a crawl happened lately.
                verdict[kind] = (f"last success lies in the future: clock skew? (last "
                                 f"successful {kind} crawl at {isoformat(last)}, now "
                                 f"{isoformat(now)})")
                verdict["ready"] = False
            elif now - last > limit:
                verdict[kind] = (f"last successful {kind} crawl at {isoformat(last)} is older "
                                 f"than {format_duration(limit)} ({READY_INTERVALS} x interval)")
                verdict["ready"] = False
            else:
                verdict[kind] = "ok"
        ready = ready and verdict["ready"]
        verdicts[name] = verdict
    return Readiness(ready=ready, accounts=verdicts)


class CrawlScheduler:
    """Runs ``crawl(account, kind)`` on each :class:`JobSpec`'s interval, on this loop."""

    def __init__(self, specs: Iterable[JobSpec], crawl: CrawlFunction) -> None:
        self.specs = tuple(specs)
        self._crawl = crawl
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._running: dict[asyncio.Task[Any], JobSpec] = {}
        self._accepting = False
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        # APScheduler reads the wall clock itself, so the first run is pinned to it too.
        now = datetime.now(UTC)
        for spec in self.specs:
            first = now + spec.offset
            self._scheduler.add_job(
                self._run,
                trigger=IntervalTrigger(seconds=spec.interval.total_seconds(),
                                        start_date=first, timezone=UTC),
                args=(spec,),
                id=spec.job_id,
                name=spec.job_id,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=spec.misfire_grace_seconds,
                next_run_time=first,  # the first crawl at start-up (spread)
                replace_existing=True,
            )

    @property
    def scheduler(self) -> AsyncIOScheduler:
        """The APScheduler instance (for inspection)."""
        return self._scheduler

    @property
    def running(self) -> tuple[JobSpec, ...]:
        """The jobs whose crawl is in progress."""
        return tuple(self._running.values())

    def start(self) -> None:
        """Start on the running event loop; every job fires once right away."""
        self._accepting = True
        self._scheduler.start()

    async def stop(self, grace: float) -> None:
        """Refuse new runs, let running crawls finish within ``grace`` seconds, cancel the rest."""
        self._accepting = False
        if self._scheduler.running:
            self._scheduler.pause()
        tasks = set(self._running)
        if tasks:
            log.info("serve.draining", crawls=[s.job_id for s in self._running.values()],
                     grace_seconds=grace)
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                log.warning("crawl.abandoned", job=self._running[task].job_id,
                            account=self._running[task].account.name,
                            kind=self._running[task].kind,
                            reason=f"still running after the {grace:g}s shutdown grace; "
                                   "nothing of it is committed")
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def _run(self, spec: JobSpec) -> None:
        if not self._accepting:
            return
        task = asyncio.current_task()
        assert task is not None  # always inside a task when run by the executor
        self._running[task] = spec
        try:
            await self._crawl(spec.account, spec.kind)
        except asyncio.CancelledError:
            if not self._accepting:
                # Abandoned by stop() (crawl.abandoned says so): end quietly, or APScheduler
                # logs the cancellation as a job error with a traceback.
                return
            raise
        except Exception:
            # The crawl function reports its own failures; this is a bug's last resort, so
            # the job keeps its schedule instead of APScheduler printing a traceback.
            log.exception("crawl.crashed", account=spec.account.name, kind=spec.kind)
        finally:
            del self._running[task]

    def _on_skipped(self, event: JobEvent) -> None:
        reason = ("the previous run is still in progress"
                  if event.code == EVENT_JOB_MAX_INSTANCES else "missed its start by too much")
        job = self._scheduler.get_job(event.job_id)
        log.info("crawl.skipped", job=event.job_id,
                 next_run=isoformat(job.next_run_time) if job else None, reason=reason)
