"""``nexus-audit crawl``: crawl every configured account once, now, and commit what completed.

Thin wiring: parse ``--kinds``, open and migrate the store, build one session, one budget
per key and one client per account, run the crawls concurrently, print one summary line
per account. Exit 0 when every crawl succeeded, 1 otherwise (one line per failure).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

from nexus_audit.api.budget import DEFAULT_MAX_WAIT, rates_in_force, shared_budgets
from nexus_audit.api.client import ApiStats, CloudNexusClient, client_session
from nexus_audit.config import DEFAULT_MAX_RESPONSE_BYTES, AccountConfig, Settings
from nexus_audit.crawl.crawler import CrawlStore, crawl_and_commit
from nexus_audit.crawl.progress import CrawlProgress, ProgressReporter
from nexus_audit.domain import escape
from nexus_audit.domain.model import KINDS, CrawlSummary, Kind
from nexus_audit.domain.timeutil import Clock, SystemClock
from nexus_audit.domain.tolerance import DEFAULT_TOTAL_TOLERANCE, TotalTolerance
from nexus_audit.errors import NexusAuditError, UsageError
from nexus_audit.logs import get_logger, redactor

log = get_logger(__name__)



def parse_kinds(text: str) -> tuple[Kind, ...]:
    """``instances,buckets`` as kinds in canonical order; :class:`UsageError` otherwise."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(wanted - set(KINDS))
    if unknown or not wanted:
        raise UsageError(f"--kinds: {', '.join(unknown) or 'nothing'} is not a kind "
                         f"(use {', '.join(KINDS)}, comma-separated)", parameter="kinds")
    return tuple(k for k in KINDS if k in wanted)


def budget_share(requests: int, per_minute: int, seconds: float) -> float:
    """Requests as a share of the budget available over the crawl (at least one minute).

    The window allows a minute's budget at once, so a crawl shorter than a minute is
    measured against one minute's budget.
    """
    return requests / (per_minute * max(1.0, seconds / 60.0))


def format_summary(summary: CrawlSummary, per_minute: int) -> str:
    """One line for one account's crawl (printed on standard output), escaped for a
    terminal: the totals note quotes the API."""
    share = budget_share(summary.requests, per_minute, summary.seconds)
    counts = []
    if "instances" in summary.kinds:
        counts.append(f"{summary.instances:,} instances")
    if "buckets" in summary.kinds:
        counts.append(f"{summary.buckets:,} buckets")
    line = (f"{summary.account}: {summary.status}: {', '.join(counts)}, "
            f"{summary.requests} requests, {summary.retries} retries, "
            f"{summary.seconds:.1f}s, {share:.0%} of the {per_minute}/min budget")
    if summary.total_mismatch:
        line += f" (totals differ: {summary.total_mismatch})"
    return escape.terminal(line)


async def run_crawls(
    accounts: Sequence[AccountConfig],
    store: CrawlStore,
    *,
    kinds: Sequence[Kind],
    request_timeout: float,
    clock: Clock,
    stream: TextIO,
    tty: bool,
    tolerance: TotalTolerance = DEFAULT_TOTAL_TOLERANCE,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    max_server_wait: float = DEFAULT_MAX_WAIT,
) -> list[CrawlSummary | NexusAuditError]:
    """Crawl each account once, concurrently; a summary or the error that stopped it, each.

    ``tolerance``, ``max_response_bytes`` and ``max_server_wait`` are the settings of the
    same names (see :class:`~nexus_audit.config.Settings`)."""
    budgets = shared_budgets(accounts, clock, max_wait=max_server_wait)
    progresses = [CrawlProgress(account=a.name) for a in accounts]
    async with client_session() as session:
        clients = [CloudNexusClient(account, session, budgets[account.name], stats=ApiStats(),
                                    timeout=request_timeout, clock=clock,
                                    max_response_bytes=max_response_bytes)
                   for account in accounts]
        reporter = ProgressReporter(progresses, stream=stream, clock=clock, tty=tty)
        reporter.start()
        try:
            results = await asyncio.gather(
                *(crawl_and_commit(account, store, client=client, kinds=kinds, clock=clock,
                                   progress=progress, tolerance=tolerance)
                  for account, client, progress in zip(accounts, clients, progresses,
                                                       strict=True)),
                return_exceptions=True,
            )
        finally:
            await reporter.stop()
    out: list[CrawlSummary | NexusAuditError] = []
    for result in results:
        if isinstance(result, (CrawlSummary, NexusAuditError)):
            out.append(result)
        else:
            raise result  # a bug or an interrupt: not ours to summarize
    return out


def crawl_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``nexus-audit crawl``; the exit code."""
    from nexus_audit.history.duckfile import process_files
    from nexus_audit.history.store import Store

    accounts = settings.in_shard(getattr(args, "shard", None)).crawled_accounts(args.account)
    kinds = parse_kinds(args.kinds)
    store = Store(settings.db_path, files=process_files())
    store.migrate()
    results = asyncio.run(run_crawls(accounts, store, kinds=kinds,
                                     request_timeout=settings.request_timeout, clock=SystemClock(),
                                     stream=sys.stderr, tty=sys.stderr.isatty(),
                                     tolerance=settings.total_tolerance,
                                     max_response_bytes=settings.max_response_bytes,
                                     max_server_wait=settings.max_server_wait.total_seconds()))
    rates = rates_in_force(accounts)
    failed = 0
    for account, result in zip(accounts, results, strict=True):
        if isinstance(result, CrawlSummary):
            print(format_summary(result, rates[account.name]), flush=True)
            if result.status == "succeeded":
                continue
            reason = result.error or "failed"
        else:
            reason = str(result)
        failed += 1
        # The reason may quote an API error body: escaped, it stays one inert line.
        sys.stderr.write(escape.terminal(redactor.scrub(
            f"nexus-audit: error: account {account.name}: {reason}")) + "\n")
    return 1 if failed else 0
