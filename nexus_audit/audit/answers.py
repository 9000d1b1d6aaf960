"""The answers a report is made of, as plain values: crawls and coverage, inventory,
cost, drift, exposures, stale instances (and :func:`money`, how amounts are rounded)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

MONEY_DECIMALS: Final = 6


def money(value: float | None) -> float:
    """Round an amount for the report (6 decimals, no negative zero).

    A non-finite amount raises ``ValueError``: records with NaN or Infinity are refused at
    the crawl, so one here is a bug, and a report must never show it as 0.
    """
    if value is None:
        return 0.0
    if not math.isfinite(value):
        raise ValueError(f"non-finite amount {value!r} in the report (a bug: records with "
                         "NaN or Infinity are refused at the crawl)")
    return round(value, MONEY_DECIMALS) + 0.0


@dataclass(frozen=True, slots=True)
class Gap:
    """Time one (account, kind) stream had no observation holding."""

    account: str
    kind: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of the window the observations covered."""

    covered_seconds: float
    window_seconds: float
    gaps: tuple[Gap, ...]

    @property
    def ratio(self) -> float:
        """Covered share of the window (1.0 when there is nothing to cover)."""
        return self.covered_seconds / self.window_seconds if self.window_seconds else 1.0


@dataclass(frozen=True, slots=True)
class ClockSkew:
    """A crawl re-dated because a crawl committed after it finished earlier."""

    account: str
    crawl_id: int
    kinds: tuple[str, ...]
    recorded_finished_at: datetime
    corrected_to: datetime
    seconds: float
    detected_by_crawl: int


@dataclass(frozen=True, slots=True)
class CrawlCounts:
    """Crawls finished inside the window."""

    count: int
    succeeded: int
    failed: int
    last_success: datetime | None
    coverage: Coverage
    #: Corrections of a clock that stepped back, detected inside the window.
    clock_skews: tuple[ClockSkew, ...] = ()


@dataclass(frozen=True, slots=True)
class Inventory:
    """The fleet at the window's end."""

    instances_by_status: dict[str, int]
    instances_by_region: dict[str, int]
    buckets_total: int
    buckets_size_bytes: int

    @property
    def instances_total(self) -> int:
        """Instances of every status."""
        return sum(self.instances_by_status.values())


@dataclass(frozen=True, slots=True)
class Amounts:
    """Money split into compute and storage, and by region."""

    compute: float
    storage: float
    by_region: dict[str, float]

    @property
    def total(self) -> float:
        """Compute plus storage."""
        return self.compute + self.storage


@dataclass(frozen=True, slots=True)
class Cost:
    """Accrued over the window, and the hourly run-rate at its end."""

    currency: str
    accrued: Amounts
    run_rate_hourly: Amounts


@dataclass(frozen=True, slots=True)
class Drift:
    """One change between a successful crawl and the previous one of its kind."""

    kind: str
    id: str
    change: str
    field: str | None
    old: Any
    new: Any
    observed_at: datetime
    account: str


@dataclass(frozen=True, slots=True)
class PublicBucket:
    """A bucket exposed at the window's end."""

    id: str
    region: str
    access: str
    size_bytes: int
    public_since: datetime
    account: str
    #: The exposure began at the account's first bucket crawl: it may be older.
    at_least: bool = False


@dataclass(frozen=True, slots=True)
class Exposure:
    """A stretch of time a bucket was exposed; ``end`` None while ongoing."""

    id: str
    access: str
    start: datetime
    end: datetime | None
    account: str
    #: ``start`` is the account's first bucket crawl: the exposure may have begun earlier.
    at_least: bool = False


@dataclass(frozen=True, slots=True)
class StaleInstance:
    """An instance not running for at least its threshold, up to the window's end."""

    id: str
    name: str
    status: str
    region: str
    stale_since: datetime
    at_least: bool
    hourly_cost: float
    account: str
