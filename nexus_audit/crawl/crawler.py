"""One crawl of one account: every instance and bucket, complete or failed, never half.

Instances and buckets are walked concurrently. Records stream to a :class:`CrawlSink` in
batches as pages arrive; only the ids seen stay in memory, each with a compact fingerprint
(:mod:`nexus_audit.crawl.collector`). Any API error, invalid record or repeated cursor
fails the crawl: a half-seen fleet is worse than none, because history would read the
missing half as "removed".

**Duplicates.** An id seen again with the same contents is dropped (pages shift under
churn). An id seen again with *different* contents fails the crawl with
``DUPLICATE_CONFLICT``, naming the id and the request ids of both answers: picking either
copy could hide an exposure. One exception, by design: the unfiltered fallback walk of the
fan-out (below) runs after the region walks finished, so a record it sees changed is a
later observation of a legitimate change, not a contradiction; its copy supersedes the
region walk's, and the crawl says so (a ``crawl.superseded`` warning and a note stored in
the crawl's ``total_mismatch``). Within one walk phase a conflict always fails.

**Totals.** When the records collected lie outside the totals the API reported (first and
last page of a chain, or the fan-out's probes; one if the other is left out) by more than
the tolerance (``total_tolerance``, default ``max(10 records, 1%)``), the crawl fails
``TOTAL_MISMATCH`` and commits nothing: pages went missing. Within the tolerance (churn
between pages), the crawl succeeds with a note.

**Region fan-out.** One cursor chain is a sequence of round trips, so a slow API caps it
far below the budget. Given the regions of the previous crawl (2 to 64), the crawl
walks one region-filtered chain per region concurrently, plus one unfiltered ``limit=1``
request for the total, and proves completeness:

1. complete if the per-region totals of the chains' *first* pages add up to the
   unfiltered total read at the start (read concurrently with those first pages);
2. otherwise (churn between reads, or a region we do not know) one more unfiltered
   ``limit=1`` request after the chains: complete if the *last* pages' totals add up to it;
3. otherwise some instances live outside the known regions: walk the unfiltered chain
   too. Records already seen are not added twice, so the crawl's records are the union of
   what both walks saw, each truly observed during this crawl.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import Any, Final, Protocol, TypeVar

from nexus_audit.api.client import REQUEST_ID_LIMIT, ApiStats, CloudNexusClient
from nexus_audit.api.pagination import CursorWalk, fetch_total
from nexus_audit.config import AccountConfig
from nexus_audit.crawl.collector import Collector
from nexus_audit.crawl.progress import CrawlProgress
from nexus_audit.domain.model import (
    KINDS,
    Bucket,
    CrawlSummary,
    Instance,
    InvalidRecordError,
    Kind,
    bucket_from_api,
    instance_from_api,
)
from nexus_audit.domain.timeutil import Clock
from nexus_audit.domain.tolerance import DEFAULT_TOTAL_TOLERANCE, TotalTolerance
from nexus_audit.errors import (
    ApiError,
    CrawlError,
    NexusAuditError,
    RateLimitedError,
    StoreError,
    TotalMismatchError,
)
from nexus_audit.logs import get_logger

log = get_logger(__name__)

#: Records handed to the sink at once: big enough for DuckDB's appender to be efficient,
#: small enough that memory stays flat however large the fleet.
BATCH_SIZE: Final = 1000
#: The error code of a complete crawl the store refused to commit (recorded as failed).
COMMIT_REFUSED: Final = "COMMIT_REFUSED"
MAX_FANOUT_REGIONS: Final = 64  #: more regions (no cloud has so many) walk one chain

T = TypeVar("T")


class CrawlSink(Protocol):
    """Where a crawl's records go as they arrive (the store's staged crawl)."""

    def add_instances(self, batch: Sequence[Instance]) -> None:
        """Stage a batch of instances."""

    def add_buckets(self, batch: Sequence[Bucket]) -> None:
        """Stage a batch of buckets."""


class DiscardableSink(CrawlSink, Protocol):
    """A sink that can be thrown away."""

    def discard(self) -> None:
        """Drop everything staged."""


class CrawlStore(Protocol):
    """What :func:`crawl_and_commit` needs from the store (all calls block)."""

    def begin_crawl(self, account: str, kinds: Sequence[Kind],
                    started_at: Any) -> DiscardableSink:
        """Open a staged crawl."""

    def commit(self, staged: Any, summary: CrawlSummary) -> int:
        """Make a complete crawl history; returns its id."""

    def record_failure(self, summary: CrawlSummary, staged: Any = None) -> int:
        """Record a failed crawl (its records are dropped); returns its id."""

    def previous_regions(self, account: str) -> list[str]:
        """Regions of the account's last successful instance crawl."""


async def _run_all(aws: Sequence[Awaitable[T]]) -> list[T]:
    """Run concurrently; the first failure cancels the rest and is raised as itself."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for task in tasks:
            # Only the first failure is raised; retrieving the others keeps asyncio from
            # logging "Task exception was never retrieved" (a traceback on stderr).
            if task.done() and not task.cancelled():
                task.exception()


def mismatch_note(kind: str, collected: int, first: int | None, last: int | None) -> str | None:
    """A note when ``collected`` equals neither total the API reported (None if it does)."""
    totals = [t for t in (first, last) if t is not None]
    if not totals or collected in totals:
        return None
    if first == last or last is None:
        return f"{kind}: collected {collected}, API total {first}"
    return f"{kind}: collected {collected}, API total {first} at the start and {last} at the end"


def check_total(kind: str, collected: int, first: int | None, last: int | None,
                tolerance: TotalTolerance) -> str | None:
    """:func:`mismatch_note`, or :class:`TotalMismatchError` when ``collected`` is further
    from the totals than ``tolerance`` allows (:meth:`TotalTolerance.breach`)."""
    note = mismatch_note(kind, collected, first, last)
    nearest = tolerance.breach(collected, first, last)
    if note is None or nearest is None:
        return note
    raise TotalMismatchError(
        f"{note}: {abs(collected - nearest):,} records off the API's total is more than "
        f"churn explains (total_tolerance {tolerance}: at most "
        f"{tolerance.records_for(nearest):,}); nothing committed")


async def _walk(walk: CursorWalk, collector: Collector[Any],
                progress: CrawlProgress | None, *, expect: bool) -> None:
    async for items in walk:
        if expect and progress is not None and walk.pages == 1:
            progress.expect(collector.kind, walk.first_total)
        collector.add(items, walk.request_id)


async def _single_instance_walk(client: CloudNexusClient, collector: Collector[Instance],
                                progress: CrawlProgress | None,
                                tolerance: TotalTolerance) -> str | None:
    walk = CursorWalk(client, "/instances", "instances")
    await _walk(walk, collector, progress, expect=True)
    return check_total("instances", collector.count, walk.first_total, walk.last_total,
                       tolerance)


async def _fan_out(client: CloudNexusClient, collector: Collector[Instance],
                   regions: Sequence[str], progress: CrawlProgress | None,
                   account: str, tolerance: TotalTolerance) -> str | None:
    walks = [CursorWalk(client, "/instances", "instances", {"region": r}) for r in regions]

    async def probe() -> int:
        total = await fetch_total(client, "/instances", "instances")
        if progress is not None:
            progress.expect("instances", total)
        return total

    results = await _run_all([probe(), *(_walk(w, collector, progress, expect=False)
                                         for w in walks)])
    start_total = results[0]
    firsts = [w.first_total for w in walks]
    lasts = [w.last_total for w in walks]
    if None not in firsts and sum(f or 0 for f in firsts) == start_total:
        return check_total("instances", collector.count, start_total,  # None: unknown
                           None if None in lasts else sum(x or 0 for x in lasts), tolerance)
    end_total = await probe()
    if None not in lasts and sum(x or 0 for x in lasts) == end_total:
        return check_total("instances", collector.count, start_total, end_total, tolerance)
    log.warning("crawl.fanout_fallback", account=account, regions=list(regions),
                region_total=sum(f or 0 for f in firsts), total=start_total,
                total_at_end=end_total,
                reason="instances outside the previous crawl's regions; walking unfiltered")
    fallback = CursorWalk(client, "/instances", "instances")
    collector.phase = 1  # its copies may supersede the region walks' (module docstring)
    await _walk(fallback, collector, progress, expect=False)
    note = check_total("instances", collector.count, fallback.first_total,
                       fallback.last_total, tolerance)
    superseded = collector.superseded_note()
    if superseded:
        log.warning("crawl.superseded", account=account, superseded=collector.superseded,
                    sample=collector.superseded_sample, detail=superseded)
    return "; ".join(n for n in (note, superseded) if n) or None


async def _crawl_instances(client: CloudNexusClient, collector: Collector[Instance],
                           regions: Sequence[str], progress: CrawlProgress | None,
                           account: str, tolerance: TotalTolerance) -> str | None:
    if 1 < len(regions) <= MAX_FANOUT_REGIONS:  # more: a region per instance, say
        return await _fan_out(client, collector, regions, progress, account, tolerance)
    return await _single_instance_walk(client, collector, progress, tolerance)


async def _crawl_buckets(client: CloudNexusClient, collector: Collector[Bucket],
                         progress: CrawlProgress | None, tolerance: TotalTolerance) -> str | None:
    # The reference shows /buckets unpaged; if an answer carries pagination, follow it.
    walk = CursorWalk(client, "/buckets", "buckets", paginated=False)
    await _walk(walk, collector, progress, expect=True)
    return check_total("buckets", collector.count, walk.first_total, walk.last_total, tolerance)


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ApiError) and exc.code:
        return exc.code
    if isinstance(exc, RateLimitedError):
        return "RATE_LIMITED"
    if isinstance(exc, CrawlError):
        return exc.code
    if isinstance(exc, InvalidRecordError):
        return "INVALID_RECORD"
    if isinstance(exc, StoreError):
        return "STORE"
    return type(exc).__name__.removesuffix("Error").upper() or "ERROR"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, InvalidRecordError):
        text = f"invalid record from CloudNexus: {text}"
    return text or type(exc).__name__


def normalize_kinds(kinds: Sequence[Kind]) -> tuple[Kind, ...]:
    """``kinds`` in canonical order without repeats (``ValueError`` if empty or unknown)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"kinds must be some of {', '.join(KINDS)}, got {list(kinds)}")
    return tuple(k for k in KINDS if k in kinds)


async def crawl_account(
    client: CloudNexusClient,
    account_name: str,
    sink: CrawlSink,
    *,
    kinds: Sequence[Kind] = KINDS,
    previous_regions: Sequence[str] = (),
    clock: Clock,
    progress: CrawlProgress | None = None,
    batch_size: int = BATCH_SIZE,
    tolerance: TotalTolerance = DEFAULT_TOTAL_TOLERANCE,
) -> CrawlSummary:
    """Crawl ``kinds`` of one account into ``sink``; a succeeded or failed summary.

    Re-raises only cancellation. ``previous_regions`` (more than one) enables the
    region fan-out described in this module's docstring; ``tolerance`` bounds how far the
    records collected may be from totals the API agrees on.
    """
    wanted = normalize_kinds(kinds)
    started_at = clock.now()
    started = clock.monotonic()
    stats = progress.stats if progress is not None else ApiStats()
    scoped = client.with_stats(stats)
    if progress is not None:
        progress.started = started
        progress.budget = client.budget
    regions = sorted({r for r in previous_regions if r})
    instances = Collector("instances", instance_from_api, sink.add_instances, scoped,
                           progress, batch_size)
    buckets = Collector("buckets", bucket_from_api, sink.add_buckets, scoped, progress,
                         batch_size)
    jobs: list[Awaitable[str | None]] = []
    if "instances" in wanted:
        jobs.append(_crawl_instances(scoped, instances, regions, progress, account_name,
                                     tolerance))
    if "buckets" in wanted:
        jobs.append(_crawl_buckets(scoped, buckets, progress, tolerance))

    failure: BaseException | None = None
    notes: list[str | None] = []
    try:
        notes = await _run_all(jobs)
        instances.flush()
        buckets.flush()
    except (NexusAuditError, InvalidRecordError) as exc:
        failure = exc
    finally:
        if progress is not None:
            progress.finished = True

    for collector in (instances, buckets):
        if collector.duplicates:
            log.warning("crawl.duplicates", account=account_name, kind=collector.kind,
                        duplicates=collector.duplicates, sample=collector.duplicate_sample)
    # Everything stored from here may hold API text: the key is scrubbed, control
    # characters removed and lengths bounded (the client already did; this is the last
    # line before the database, the Parquet export and stderr).
    mismatch = scoped.scrub("; ".join(n for n in notes if n), 2000) or None
    if mismatch:
        log.warning("crawl.total_mismatch", account=account_name, detail=mismatch)
    request_id = (failure.request_id
                  if isinstance(failure, (ApiError, InvalidRecordError, CrawlError)) else None)
    summary = CrawlSummary(
        account=account_name,
        kinds=wanted,
        started_at=started_at,
        finished_at=clock.now(),
        status="failed" if failure is not None else "succeeded",
        instances=instances.count,
        buckets=buckets.count,
        requests=stats.total_requests,
        retries=stats.total_retries,
        total_mismatch=mismatch,
        error=scoped.scrub(_one_line(failure), 1000) if failure is not None else None,
        error_code=(scoped.scrub(_error_code(failure), 64)
                    if failure is not None else None),
        request_id=scoped.scrub(request_id, REQUEST_ID_LIMIT) if request_id else None,
        requests_by_endpoint=stats.by_endpoint(),
    )
    log.info(
        "crawl.finished", account=account_name, kinds=list(wanted), status=summary.status,
        instances=summary.instances, buckets=summary.buckets, requests=summary.requests,
        retries=summary.retries, seconds=round(clock.monotonic() - started, 3),
        total_mismatch=mismatch, regions=len(regions), error=summary.error,
        error_code=summary.error_code, request_id=summary.request_id,
    )
    return summary


async def crawl_and_commit(
    account: AccountConfig,
    store: CrawlStore,
    *,
    client: CloudNexusClient,
    kinds: Sequence[Kind] = KINDS,
    clock: Clock,
    progress: CrawlProgress | None = None,
    tolerance: TotalTolerance = DEFAULT_TOTAL_TOLERANCE,
) -> CrawlSummary:
    """Begin a staged crawl, crawl, then commit it, or record the failure (nothing else).

    The store's calls block (DuckDB), so they run in a worker thread. On cancellation
    the staged records are discarded and the cancellation propagates. A complete crawl the
    store refuses to commit is not history: it is recorded as failed with the code
    ``COMMIT_REFUSED`` and the store's reason, and that failed summary is returned; only
    when the store cannot record even that does :class:`StoreError` propagate.
    """
    wanted = normalize_kinds(kinds)
    previous: Sequence[str] = ()
    if "instances" in wanted:
        previous = await asyncio.to_thread(store.previous_regions, account.name)
    staged = await asyncio.to_thread(store.begin_crawl, account.name, wanted, clock.now())
    try:
        summary = await crawl_account(client, account.name, staged, kinds=wanted,
                                      previous_regions=previous, clock=clock, progress=progress,
                                      tolerance=tolerance)
    except BaseException:
        await asyncio.to_thread(staged.discard)
        raise
    if summary.status == "succeeded":
        try:
            await asyncio.to_thread(store.commit, staged, summary)
        except StoreError as exc:
            refused = replace(summary, status="failed", error_code=COMMIT_REFUSED,
                              error=f"the store refused the commit: {_one_line(exc)}")
            try:
                await asyncio.to_thread(store.record_failure, refused)
            except StoreError:
                raise exc from None  # nothing could be recorded: the caller counts it
            log.error("crawl.commit_refused", account=account.name, kinds=list(wanted),
                      error=refused.error, error_code=COMMIT_REFUSED,
                      hint="the crawl was recorded as failed; nothing of it is history")
            return refused
    else:
        await asyncio.to_thread(store.record_failure, summary, staged)
    return summary
