"""The metrics snapshot: the latest committed state, aggregated once per commit.

Scrapes never touch DuckDB or CloudNexus: after each commit, ``serve`` reads the store's
latest state in a worker thread, folds it into a :class:`Snapshot` of plain, immutable
values with :func:`build_snapshot`, and swaps it in atomically (:class:`SnapshotHolder`).
Collectors read whichever snapshot is current when a scrape starts.

Units: memory is reported in bytes with 1 GB = 10^9 bytes, the same decimal gigabyte the
API and the pricing use for storage (``memory_gb`` x 10^9), so sums stay comparable.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from itertools import chain
from typing import Any, Final

from nexus_audit.domain.exposure import is_exposed
from nexus_audit.domain.model import KINDS, Bucket, Instance, Kind
from nexus_audit.domain.pricing import BYTES_PER_GB
from nexus_audit.history.store import AccountState, CrawlInfo

#: Statuses reported by ``nexus_stale_instances`` (zero when none, so alerts see 0).
STALE_STATUSES: Final = ("stopped", "pending")

InstancePrice = Callable[[Instance], float]
BucketPrice = Callable[[Bucket], float]


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceTotals:
    """Instances of one (account, region, status): count, vCPUs, memory bytes."""

    count: int = 0
    vcpus: int = 0
    memory_bytes: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketTotals:
    """Buckets of one (account, region, access): count and bytes stored."""

    count: int = 0
    size_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PricingLabel:
    """Which price list the cost gauges use (``nexus_pricing_info``)."""

    name: str
    as_of: str
    currency: str
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything the inventory and crawl-state collectors emit, pre-aggregated."""

    #: Monotonic per process; the exposition cache is keyed by it.
    generation: int = 0
    accounts: tuple[str, ...] = ()
    instances: Mapping[tuple[str, str, str], InstanceTotals] = field(default_factory=dict)
    buckets: Mapping[tuple[str, str, str], BucketTotals] = field(default_factory=dict)
    public_buckets: Mapping[str, int] = field(default_factory=dict)
    #: (account, bucket, region, access, size_bytes), when per-bucket series are on.
    bucket_series: tuple[tuple[str, str, str, str, int], ...] = ()
    #: (account, instance, name, region, status, plan), when per-instance series are on.
    instance_series: tuple[tuple[str, str, str, str, str, str], ...] = ()
    #: Hourly run-rate by (account, region, kind) with kind ``compute`` or ``storage``.
    cost_hourly: Mapping[tuple[str, str, str], float] = field(default_factory=dict)
    pricing: PricingLabel | None = None
    stale: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: Observation time (unix seconds) of the state shown, by (account, kind).
    as_of: Mapping[tuple[str, str], float] = field(default_factory=dict)
    last_crawl: Mapping[tuple[str, str], CrawlInfo] = field(default_factory=dict)
    last_success: Mapping[tuple[str, str], datetime] = field(default_factory=dict)
    #: Current policy findings by (account, rule, severity, status); None without a policy.
    findings: Mapping[tuple[str, str, str, str], int] | None = None
    #: Crawls re-dated because the clock stepped back, by (account, kind): from the store.
    clock_corrections: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: Crawls of (account, kind) that failed to commit and could not even be recorded as
    #: failed since its last recorded crawl (the store's reason): from ``serve`` alone.
    unrecorded: Mapping[tuple[str, str], str] = field(default_factory=dict)


def build_snapshot(
    states: Iterable[AccountState],
    *,
    generation: int,
    instance_price: InstancePrice | None = None,
    bucket_price: BucketPrice | None = None,
    pricing: PricingLabel | None = None,
    stale: Mapping[tuple[str, str], int] | None = None,
    per_bucket: bool = True,
    per_instance: bool = False,
    findings: Mapping[tuple[str, str, str, str], int] | None = None,
    kinds: Collection[Kind] = KINDS,
    previous: Snapshot | None = None,
) -> Snapshot:
    """Fold accounts' latest state into a :class:`Snapshot` (pure; one pass per record).

    Without prices, no cost series are produced. Compute cost accrues only for running
    instances, as in the report; storage accrues on every bucket.

    Only the records of ``kinds`` are folded; the parts derived from the other kind's
    records (counts, per-resource series, that kind's cost) are taken from ``previous``,
    which must then be given: after a bucket poll, the 100,000 instances of the last
    instance crawl are not folded again. The result equals a fold of every kind as long
    as the other kind's records did not change since ``previous`` was built.
    """
    partial = set(KINDS) - set(kinds)
    if partial and previous is None:
        raise ValueError("a snapshot of some kinds needs the previous snapshot")
    instances: dict[tuple[str, str, str], list[float]] = {}
    buckets: dict[tuple[str, str, str], list[int]] = {}
    public: dict[str, int] = {}
    cost: dict[tuple[str, str, str], float] = {}
    bucket_series: list[tuple[str, str, str, str, int]] = []
    instance_series: list[tuple[str, str, str, str, str, str]] = []
    as_of: dict[tuple[str, str], float] = {}
    last_crawl: dict[tuple[str, str], CrawlInfo] = {}
    last_success: dict[tuple[str, str], datetime] = {}
    corrections: dict[tuple[str, str], int] = {}
    stale_counts: dict[tuple[str, str], int] = {}
    accounts: list[str] = []
    fold = _InstanceFold(instance_price)
    for state in states:
        account = state.account
        fold.account = account
        accounts.append(account)
        if state.instances_as_of is not None:
            as_of[(account, "instances")] = state.instances_as_of.timestamp()
            for status in STALE_STATUSES:
                stale_counts[(account, status)] = 0
        if state.buckets_as_of is not None:
            as_of[(account, "buckets")] = state.buckets_as_of.timestamp()
            public[account] = 0
        for kind in KINDS:
            corrections[(account, kind)] = state.clock_corrections.get(kind, 0)
            if kind in state.last_crawl:
                last_crawl[(account, kind)] = state.last_crawl[kind]
            if kind in state.last_success:
                last_success[(account, kind)] = state.last_success[kind]
        for inst in state.instances if "instances" in kinds else ():
            fold.add(inst, 1)
            if per_instance:
                instance_series.append((account, inst.id, inst.name, inst.region, inst.status,
                                        inst.plan or ""))
        for group in state.instance_groups if "instances" in kinds else ():
            # Priced by shape: a record of the group's region, status and shape.
            fold.add(Instance("", "", group.status, group.region, group.cpu,
                              group.memory_gb, group.plan, "{}", None, "{}"), group.number)
        for bucket in state.buckets if "buckets" in kinds else ():
            # A NULL access (only another writer leaves one: crawls refuse it) is exposed,
            # and labelled "" rather than breaking the sort of the series.
            access = bucket.access or ""
            key = (account, bucket.region, access)
            btotals = buckets.get(key)
            if btotals is None:
                btotals = buckets[key] = [0, 0]
            btotals[0] += 1
            btotals[1] += bucket.size_bytes
            if is_exposed(bucket.access):
                public[account] = public.get(account, 0) + 1
            if bucket_price is not None:
                ckey = (account, bucket.region, "storage")
                cost[ckey] = cost.get(ckey, 0.0) + bucket_price(bucket)
            if per_bucket:
                bucket_series.append((account, bucket.id, bucket.region, access,
                                      bucket.size_bytes))
    fold.finish(instances, cost)
    stale_counts = _stale_counts(stale_counts, accounts, stale)
    if partial:
        assert previous is not None
        _reuse(previous, partial, set(accounts), instances, buckets, public, cost,
               bucket_series, instance_series)
    return Snapshot(
        generation=generation,
        accounts=tuple(accounts),
        instances={k: InstanceTotals(count=int(v[0]), vcpus=int(v[1]), memory_bytes=v[2])
                   for k, v in instances.items()},
        buckets={k: BucketTotals(count=v[0], size_bytes=v[1]) for k, v in buckets.items()},
        public_buckets=public,
        bucket_series=tuple(bucket_series),
        instance_series=tuple(instance_series),
        cost_hourly=cost,
        pricing=pricing,
        stale=stale_counts,
        as_of=as_of,
        last_crawl=last_crawl,
        last_success=last_success,
        clock_corrections=corrections,
        findings=None if findings is None else {
            k: n for k, n in findings.items() if k[0] in accounts},
    )


class _InstanceFold:
    """The instance totals and compute cost of a snapshot, summed exactly.

    Each sum is of value x count terms, rounded once at the end, so it is the same float
    whether the instances come as records (one term each) or as counted groups
    (:class:`~nexus_audit.history.readers.InstanceGroup`), and in whatever order: a
    float sum in record order would differ from a sum by groups in its last digits.
    """

    def __init__(self, price: InstancePrice | None) -> None:
        self.price = price
        self.account = ""
        #: (account, region, status) → [count, vCPUs], and → memory bytes → how many.
        self.counts: dict[tuple[str, str, str], list[int]] = {}
        self.memory: dict[tuple[str, str, str], dict[float, int]] = {}
        #: (account, region, "compute") → hourly price → how many running at it.
        self.prices: dict[tuple[str, str, str], dict[float, int]] = {}

    def add(self, inst: Instance, count: int) -> None:
        """``count`` instances like ``inst`` (its account: :attr:`account`)."""
        key = (self.account, inst.region, inst.status)
        totals = self.counts.get(key)
        if totals is None:
            totals = self.counts[key] = [0, 0]
            self.memory[key] = {}
        totals[0] += count
        totals[1] += inst.cpu * count
        terms = self.memory[key]
        value = inst.memory_gb * BYTES_PER_GB
        terms[value] = terms.get(value, 0) + count
        if self.price is not None and inst.status == "running":
            prices = self.prices.setdefault((self.account, inst.region, "compute"), {})
            hourly = self.price(inst)
            prices[hourly] = prices.get(hourly, 0) + count

    def finish(self, instances: dict[tuple[str, str, str], list[float]],
               cost: dict[tuple[str, str, str], float]) -> None:
        """Write the sums into ``instances`` ([count, vCPUs, memory]) and ``cost``."""
        for key, (count, vcpus) in self.counts.items():
            instances[key] = [count, vcpus, _exact_sum(self.memory[key])]
        for ckey, terms in self.prices.items():
            cost[ckey] = _exact_sum(terms)


def _exact_sum(terms: Mapping[float, int]) -> float:
    """The sum of value x count over ``terms``, correctly rounded (as ``math.fsum`` of
    every term); a NaN or infinite value gives the float sum (NaN or infinite too)."""
    if not all(map(math.isfinite, terms)):
        return sum(value * n for value, n in terms.items())
    return float(sum((Fraction(value) * n for value, n in terms.items()), Fraction(0)))


def _reuse(previous: Snapshot, kinds: Collection[Kind], accounts: Collection[str],
           instances: dict[tuple[str, str, str], list[float]],
           buckets: dict[tuple[str, str, str], list[int]], public: dict[str, int],
           cost: dict[tuple[str, str, str], float],
           bucket_series: list[tuple[str, str, str, str, int]],
           instance_series: list[tuple[str, str, str, str, str, str]]) -> None:
    """Copy the parts of ``previous`` derived from the records of ``kinds`` (in place)."""
    if "instances" in kinds:
        for key, inst in previous.instances.items():
            if key[0] in accounts:
                instances[key] = [inst.count, inst.vcpus, inst.memory_bytes]
        instance_series.extend(r for r in previous.instance_series if r[0] in accounts)
    if "buckets" in kinds:
        for bkey, totals in previous.buckets.items():
            if bkey[0] in accounts:
                buckets[bkey] = [totals.count, totals.size_bytes]
        for account, n in previous.public_buckets.items():
            if account in accounts and account in public:
                public[account] = n
        bucket_series.extend(r for r in previous.bucket_series if r[0] in accounts)
    wanted = {"compute"} if "instances" in kinds else set()
    if "buckets" in kinds:
        wanted.add("storage")
    for ckey, value in previous.cost_hourly.items():
        if ckey[0] in accounts and ckey[2] in wanted:
            cost[ckey] = value


def _stale_counts(zeros: Mapping[tuple[str, str], int], accounts: Collection[str],
                  stale: Mapping[tuple[str, str], int] | None) -> dict[tuple[str, str], int]:
    """``nexus_stale_instances``: 0 for each of :data:`STALE_STATUSES` of every account
    with an instance crawl (``zeros``), then the counts given for the ``accounts`` shown."""
    counts = dict(zeros)
    for skey, n in (stale or {}).items():
        if skey[0] in accounts:
            counts[skey] = n
    return counts


def combine_snapshots(parts: Iterable[Snapshot], *, generation: int,
                      pricing: PricingLabel | None = None,
                      stale: Mapping[tuple[str, str], int] | None = None,
                      findings: bool = False) -> Snapshot:
    """The snapshot of every account in ``parts``, each a snapshot of some accounts (of one,
    in ``serve``), given in account order and disjoint: equal to :func:`build_snapshot`
    over all their states at once.

    Nothing is folded again, so rebuilding after one account's commit costs that account's
    records plus a copy of the other parts' aggregates (``serve`` keeps one part per
    account and rebuilds only those that committed). ``stale`` (counts at this moment)
    and ``pricing`` apply to the whole, whatever the parts carry; ``findings``: whether a
    policy is in force (the parts' findings are then merged, else there are none).
    """
    chosen = list(parts)
    accounts = tuple(a for part in chosen for a in part.accounts)

    def union(name: str) -> dict[Any, Any]:
        merged: dict[Any, Any] = {}
        for part in chosen:
            merged.update(getattr(part, name))
        return merged

    as_of = union("as_of")
    zeros = {(account, status): 0 for account in accounts if (account, "instances") in as_of
             for status in STALE_STATUSES}
    merged_findings: dict[tuple[str, str, str, str], int] = {}
    for part in chosen:
        merged_findings.update(part.findings or {})
    return Snapshot(
        generation=generation,
        accounts=accounts,
        instances=union("instances"),
        buckets=union("buckets"),
        public_buckets=union("public_buckets"),
        bucket_series=tuple(chain.from_iterable(p.bucket_series for p in chosen)),
        instance_series=tuple(chain.from_iterable(p.instance_series for p in chosen)),
        cost_hourly=union("cost_hourly"),
        pricing=pricing,
        stale=_stale_counts(zeros, set(accounts), stale),
        as_of=as_of,
        last_crawl=union("last_crawl"),
        last_success=union("last_success"),
        clock_corrections=union("clock_corrections"),
        findings=merged_findings if findings else None,
    )


class SnapshotHolder:
    """The current snapshot; swapped whole, so a scrape never sees half of two."""

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self._snapshot = snapshot or Snapshot()
        self._lock = threading.Lock()

    @property
    def current(self) -> Snapshot:
        """The snapshot in force."""
        return self._snapshot

    def swap(self, snapshot: Snapshot) -> bool:
        """Install ``snapshot`` unless a newer generation is already in; True if installed."""
        with self._lock:
            if snapshot.generation < self._snapshot.generation:
                return False
            self._snapshot = snapshot
            return True
