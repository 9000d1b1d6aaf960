"""Live progress of running crawls: one line on a terminal, periodic log lines off one.

:class:`CrawlProgress` is what a crawl updates as pages arrive (plain counters);
:func:`format_progress` renders several of them as one line (pure); :class:`ProgressReporter`
redraws that line on a terminal, or logs ``crawl.progress`` events otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, TextIO

from nexus_audit.api.budget import RateBudget
from nexus_audit.api.client import ApiStats
from nexus_audit.domain import escape
from nexus_audit.domain.timeutil import Clock
from nexus_audit.logs import get_logger

log = get_logger(__name__)

#: A wait for the rate budget this long or longer is shown instead of the time left
#: (shorter ones are the budget's normal pacing between requests).
SHOW_WAIT_FROM: Final = 1.0


@dataclass(slots=True)
class CrawlProgress:
    """How far one account's crawl has got; the crawl writes, the reporter reads."""

    account: str
    budget: RateBudget | None = None
    #: Unique records collected so far, by kind.
    records: dict[str, int] = field(default_factory=dict)
    #: ``pagination.total`` seen on the first page, by kind (what the crawl expects).
    expected: dict[str, int] = field(default_factory=dict)
    #: The crawl's own request counters (set by the crawl).
    stats: ApiStats = field(default_factory=ApiStats)
    started: float | None = None
    finished: bool = False

    def expect(self, kind: str, total: int | None) -> None:
        """Record (or raise) the expected number of records of ``kind``."""
        if total is not None:
            self.expected[kind] = max(self.expected.get(kind, 0), total)



def _count(n: int) -> str:
    return f"{n:,}"


def time_left(collected: int, expected: int, elapsed: float) -> float | None:
    """Seconds left at the rate so far; None while unknown (nothing collected yet)."""
    if collected <= 0 or elapsed <= 0 or expected <= collected:
        return None if collected <= 0 or elapsed <= 0 else 0.0
    return (expected - collected) * elapsed / collected


def budget_wait(budget: RateBudget, now: float) -> str | None:
    """What the line says while the budget binds for :data:`SHOW_WAIT_FROM` or longer:
    the countdown to the next request (its window's free slot or the server's reset);
    None while requests flow."""
    at = budget.next_slot(now)
    if at is None or at - now < SHOW_WAIT_FROM:
        return None
    if at == math.inf:
        return "rate limit reached, waiting for answers in flight"
    return f"rate limit reached, next request in {math.ceil(at - now)}s"


def format_progress(progresses: Sequence[CrawlProgress], now: float) -> str:
    """One line for all running crawls: records, requests, budget in use, time left (or,
    while the rate budget holds the crawl back, the countdown to its next request)."""
    parts = []
    for p in progresses:
        collected = sum(p.records.values())
        expected = sum(p.expected.values())
        text = f"{escape.terminal(p.account)}: {_count(collected)}"
        if expected:
            text += f"/{_count(expected)}"
        text += f" records, {p.stats.total_requests} requests"
        if p.budget is not None:
            text += f", budget {round(100 * p.budget.in_window(now) / p.budget.capacity)}%"
        waiting = budget_wait(p.budget, now) if p.budget is not None else None
        if p.finished:
            text += ", done"
        elif waiting is not None:
            # The estimate from the rate so far would be wrong now: say what it waits for.
            text += f", {waiting}"
        elif p.started is not None and expected:
            left = time_left(collected, expected, now - p.started)
            if left is not None:
                text += f", ~{left:.0f}s left"
        parts.append(text)
    return " | ".join(parts)


class ProgressReporter:
    """Redraws the progress line on a terminal every ``interval``; logs every ``log_every``."""

    def __init__(
        self,
        progresses: Sequence[CrawlProgress],
        *,
        stream: TextIO,
        clock: Clock,
        tty: bool,
        interval: float = 0.25,
        log_every: float = 10.0,
    ) -> None:
        self.progresses = progresses
        self.stream = stream
        self.clock = clock
        self.tty = tty
        self.interval = interval
        self.log_every = log_every
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last_log = self.clock.monotonic()
        while True:
            await self.clock.sleep(self.interval if self.tty else 1.0)
            now = self.clock.monotonic()
            if self.tty:
                line = format_progress(self.progresses, now)
                self.stream.write("\r\x1b[K" + line)
                self.stream.flush()
            elif now - last_log >= self.log_every:
                last_log = now
                for p in self.progresses:
                    if not p.finished:
                        log.info("crawl.progress", account=p.account,
                                 records=sum(p.records.values()),
                                 expected=sum(p.expected.values()) or None,
                                 requests=p.stats.total_requests)

    def start(self) -> None:
        """Begin reporting in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop reporting and clear the line."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
