"""The exporter's own health (prefix ``nexus_audit_``): crawls, API traffic, budget.

Two sources: the committed crawl state (from the snapshot, so it survives restarts) and
process-life counters (:class:`CrawlStats`, the API client's ``ApiStats``), which only
ever go up while the process lives. Counters are read by copying their dicts, a single
atomic step under the GIL, so a scrape in a worker thread never races the event loop.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nexus_audit.api import ApiStats, RateBudget
from nexus_audit.domain.model import KINDS
from nexus_audit.metrics.exposition import SlicedCollector, SnapshotCollector
from nexus_audit.metrics.snapshot import SnapshotHolder

#: Crawl duration buckets (seconds): a bucket poll takes about a second, a large
#: instance crawl within a modest budget tens of minutes.
DURATION_BUCKETS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
                           1800.0, 3600.0)
CRAWL_STATUSES: Final = ("succeeded", "failed")


class CrawlStateCollector(SnapshotCollector):
    """The last committed crawl of each account and kind (from the snapshot).

    Emits::

        nexus_audit_crawl_success{account="prod",kind="instances"} 1
        nexus_audit_last_success_timestamp_seconds{account="prod",kind="instances"} 1.7e+09
        nexus_audit_total_mismatch{account="prod",kind="instances"} 0
        nexus_audit_clock_skew_corrections_total{account="prod",kind="instances"} 0

    A crawl that failed to commit and could not even be recorded (the snapshot's
    ``unrecorded``) counts as the last crawl: success 0 until a crawl of that kind is
    recorded again.
    """

    def __init__(self, holder: SnapshotHolder) -> None:
        self._holder = holder

    def over(self, holder: SnapshotHolder) -> CrawlStateCollector:
        """The same collector reading ``holder`` (to render one account's slice)."""
        return CrawlStateCollector(holder)

    def collect(self) -> Iterator[Metric]:
        """Yield the crawl-state families of the current snapshot."""
        snap = self._holder.current
        labels = ["account", "kind"]
        success = GaugeMetricFamily("nexus_audit_crawl_success",
                                    "1 if the last crawl of this kind succeeded, else 0.",
                                    labels=labels)
        last = GaugeMetricFamily("nexus_audit_last_success_timestamp_seconds",
                                 "When the last successful crawl of this kind finished.",
                                 labels=labels)
        mismatch = GaugeMetricFamily(
            "nexus_audit_total_mismatch",
            "1 if the last crawl collected a count different from pagination.total.",
            labels=labels)
        corrections = CounterMetricFamily(
            "nexus_audit_clock_skew_corrections",
            "Crawls re-dated because a crawl committed after them finished earlier (the "
            "clock stepped back), by kind.", labels=labels)
        for key in sorted(set(snap.last_crawl) | set(snap.unrecorded)):
            info = snap.last_crawl.get(key)
            ok = info is not None and info.status == "succeeded" and key not in snap.unrecorded
            success.add_metric(list(key), 1 if ok else 0)
            if info is not None:
                mismatch.add_metric(list(key), 1 if info.total_mismatch else 0)
        for (account, kind), moment in sorted(snap.last_success.items()):
            last.add_metric([account, kind], moment.timestamp())
        for (account, kind), n in sorted(snap.clock_corrections.items()):
            corrections.add_metric([account, kind], n)
        yield success
        yield last
        yield mismatch
        yield corrections


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0


class CrawlStats:
    """Process-life crawl counters and duration histograms by account and kind."""

    def __init__(self, accounts: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        #: Moves with every crawl recorded (the exposition caches the rendering by it).
        self.version = 0
        #: Per account, moves with every crawl of that account recorded (the exposition
        #: renders again only the accounts whose version moved).
        self._versions: dict[str, int] = {}
        self._counts: dict[tuple[str, str, str], int] = {}
        self._durations: dict[tuple[str, str], _Histogram] = {}
        for account in accounts:
            self._versions[account] = 0
            for kind in KINDS:
                # Present at 0 from the start, so increase() and alerts see the first one.
                for status in CRAWL_STATUSES:
                    self._counts[(account, kind, status)] = 0
                self._durations[(account, kind)] = _Histogram()

    def record(self, account: str, kinds: Iterable[str], status: str, seconds: float) -> None:
        """Count one finished crawl (succeeded or failed) covering ``kinds``."""
        index = bisect.bisect_left(DURATION_BUCKETS, seconds)
        with self._lock:
            self.version += 1
            self._versions[account] = self._versions.get(account, 0) + 1
            for kind in kinds:
                key = (account, kind, status)
                self._counts[key] = self._counts.get(key, 0) + 1
                hist = self._durations.setdefault((account, kind), _Histogram())
                hist.counts[index] += 1
                hist.total += seconds

    def versions(self) -> dict[str, int]:
        """Per account with counters: a number that moves whenever they do."""
        with self._lock:
            return dict(self._versions)

    def counts(self, account: str | None = None) -> dict[tuple[str, str, str], int]:
        """Crawls so far by (account, kind, status); of ``account`` alone if given."""
        with self._lock:
            if account is None:
                return dict(self._counts)
            return {k: n for k, n in self._counts.items() if k[0] == account}

    def durations(self, account: str | None = None
                  ) -> dict[tuple[str, str], tuple[list[int], float]]:
        """Per (account, kind): counts per duration bucket (last is +Inf) and their sum;
        of ``account`` alone if given."""
        with self._lock:
            return {k: (list(h.counts), h.total) for k, h in self._durations.items()
                    if account is None or k[0] == account}


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class CrawlStatsCollector(SlicedCollector):
    """Crawls finished by this process, and how long they took.

    Emits::

        nexus_audit_crawls_total{account="prod",kind="instances",status="succeeded"} 12
        nexus_audit_crawl_duration_seconds_bucket{account="prod",kind="instances",le="10.0"} 11
        nexus_audit_crawl_duration_seconds_sum{account="prod",kind="instances"} 64.2
        nexus_audit_crawl_duration_seconds_count{account="prod",kind="instances"} 12
    """

    def __init__(self, stats: CrawlStats, *, only: str | None = None,
                 none: bool = False) -> None:
        self._stats = stats
        #: Render one account's series (``only``), or none at all (``none``: the families'
        #: headers alone), instead of every account's.
        self._only = only
        self._none = none

    def version(self) -> int:
        """Changes whenever a crawl is recorded (the samples change only then)."""
        return self._stats.version

    def versions(self) -> dict[str, int]:
        """Per account: changes whenever a crawl of that account is recorded."""
        return self._stats.versions()

    def sliced(self, account: str | None) -> CrawlStatsCollector:
        """The same families with ``account``'s series alone (None: no series)."""
        return CrawlStatsCollector(self._stats, only=account, none=account is None)

    def collect(self) -> Iterator[Metric]:
        """Yield the crawl counter and the duration histogram."""
        total = CounterMetricFamily("nexus_audit_crawls",
                                    "Crawls finished by this process, by kind and status.",
                                    labels=["account", "kind", "status"])
        counts = {} if self._none else self._stats.counts(self._only)
        durations = {} if self._none else self._stats.durations(self._only)
        for key, n in sorted(counts.items()):
            total.add_metric(list(key), n)
        yield total
        hist = HistogramMetricFamily("nexus_audit_crawl_duration_seconds",
                                     "Wall-clock length of crawls, by kind.",
                                     labels=["account", "kind"])
        for (account, kind), (per_bucket, seconds) in sorted(durations.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*DURATION_BUCKETS, float("inf")), per_bucket, strict=True):
                cumulative += n
                buckets.append((_le(bound), cumulative))
            hist.add_metric([account, kind], buckets, seconds)
        yield hist


class ApiCollector(Collector):
    """CloudNexus traffic per account, from each account's shared ``ApiStats`` and budget.

    Emits::

        nexus_audit_api_requests_total{account="prod",endpoint="GET /instances",code="200"} 310
        nexus_audit_api_retries_total{account="prod",endpoint="GET /instances",reason="429"} 2
        nexus_audit_invalid_records_total{account="prod",kind="instances"} 0
        nexus_audit_rate_limit_remaining{account="prod"} 912
        nexus_audit_rate_limit_limit{account="prod"} 1000
        nexus_audit_rate_budget_requests_per_minute{account="prod"} 250
    """

    def __init__(self, stats: Mapping[str, ApiStats], budgets: Mapping[str, RateBudget]) -> None:
        self._stats = stats
        self._budgets = budgets

    def collect(self) -> Iterator[Metric]:
        """Yield the API traffic families."""
        requests = CounterMetricFamily("nexus_audit_api_requests",
                                       "CloudNexus API requests by endpoint and HTTP status "
                                       "(code 'error' when no answer came).",
                                       labels=["account", "endpoint", "code"])
        retries = CounterMetricFamily("nexus_audit_api_retries",
                                      "CloudNexus API retries by endpoint and reason.",
                                      labels=["account", "endpoint", "reason"])
        invalid = CounterMetricFamily("nexus_audit_invalid_records",
                                      "API records skipped because they failed validation.",
                                      labels=["account", "kind"])
        remaining = GaugeMetricFamily("nexus_audit_rate_limit_remaining",
                                      "X-RateLimit-Remaining of the last API answer.",
                                      labels=["account"])
        limit = GaugeMetricFamily("nexus_audit_rate_limit_limit",
                                  "X-RateLimit-Limit of the last API answer.", labels=["account"])
        budget = GaugeMetricFamily("nexus_audit_rate_budget_requests_per_minute",
                                   "Requests per minute this exporter may spend on the key.",
                                   labels=["account"])
        for account, stats in sorted(self._stats.items()):
            for (endpoint, code), n in sorted(dict(stats.requests).items()):
                requests.add_metric([account, endpoint, code], n)
            for (endpoint, reason), n in sorted(dict(stats.retries).items()):
                retries.add_metric([account, endpoint, reason], n)
            invalid_counts = dict(stats.invalid_records)
            for kind in KINDS:
                invalid.add_metric([account, kind], invalid_counts.get(kind, 0))
            if stats.rate_limit_remaining is not None:
                remaining.add_metric([account], stats.rate_limit_remaining)
            if stats.rate_limit_limit is not None:
                limit.add_metric([account], stats.rate_limit_limit)
        for account, rate_budget in sorted(self._budgets.items()):
            budget.add_metric([account], rate_budget.per_minute)
        yield requests
        yield retries
        yield invalid
        yield remaining
        yield limit
        yield budget


class BuildInfoCollector(Collector):
    """The running version.

    Emits::

        nexus_audit_build_info{version="0.1.0"} 1
    """

    def __init__(self, version: str) -> None:
        self._version = version

    def collect(self) -> Iterator[Metric]:
        """Yield the build info family."""
        info = GaugeMetricFamily("nexus_audit_build_info", "The nexus-audit version, value 1.",
                                 labels=["version"])
        info.add_metric([self._version], 1)
        yield info
