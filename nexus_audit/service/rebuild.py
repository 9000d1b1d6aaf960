"""``serve``'s metrics snapshot, rebuilt for the accounts and kinds that committed.

The snapshot is kept as one part per account (a :class:`~nexus_audit.metrics.Snapshot` of
that account alone, :func:`~nexus_audit.metrics.build_snapshot` over its state) and
installed as their union (:func:`~nexus_audit.metrics.snapshot.combine_snapshots`). After
a crawl commits, only its account's records of the kinds it covered are read back and
folded into that account's part; the other accounts' parts are reused as they are, and the
rest of the account's part too (after a bucket poll, its instances). With a hundred
accounts a commit reads and folds a hundredth of the fleet, not all of it. The result
equals a full rebuild (tests/test_snapshot_accounts.py checks it over random histories).

Commits mark their (account, kinds) to rebuild; a rebuild takes every mark made before it
starts, in a worker thread, one rebuild at a time. So commits that land together (a
hundred accounts crawled at once) are folded in one rebuild, and the rebuilds queued
behind it find nothing left to do: the metrics never lag a commit by more than one
rebuild. Each rebuild logs ``metrics.rebuilt`` with the accounts and records it folded
and its seconds.

Stale counts: the candidates of each account (its instances not running as of its last
instance crawl, with the start of their streaks) are kept per account and recounted for
every account at each rebuild's time, so values that move with time alone stay current.
Findings: judged again only for the accounts rebuilt, and of those only the rules of the
kinds rebuilt; the others' counts come from the previous snapshot.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from itertools import accumulate
from typing import Final

from nexus_audit.audit.findings import current_counts, evaluate_history
from nexus_audit.audit.stale import StreakCount, current_streak_counts, threshold
from nexus_audit.config import Settings
from nexus_audit.domain.model import KINDS, Kind
from nexus_audit.domain.policy import RULES, Policy
from nexus_audit.domain.pricing import Pricing
from nexus_audit.domain.timeutil import Clock, Window
from nexus_audit.errors import NoDataError, StoreError
from nexus_audit.history.cancel import Cancel
from nexus_audit.history.store import AccountState, Store
from nexus_audit.logs import get_logger
from nexus_audit.metrics import Exporter, PricingLabel, Snapshot, SnapshotHolder, build_snapshot
from nexus_audit.metrics.snapshot import combine_snapshots
from nexus_audit.service.workers import (
    ReportWorkers,
    StreakArgs,
    streak_counts_from_json,
    streak_counts_json,
)

log = get_logger(__name__)

FindingKey = tuple[str, str, str, str]
#: Accounts whose instance records one read holds at a time (with per-instance series): a
#: rebuild folding many accounts (a burst of commits) reads them in turns, so its memory is
#: that of a few accounts.
READ_ACCOUNTS: Final = 8


class SnapshotRebuilds:
    """The snapshot half of :class:`~nexus_audit.service.runtime.Service` (a mixin over
    the service's settings, store, pricing, policy, clock and exporter)."""

    settings: Settings
    store: Store
    pricing: Pricing
    policy: Policy | None
    clock: Clock
    names: tuple[str, ...]
    holder: SnapshotHolder
    exporter: Exporter
    rebuild_worker: ReportWorkers | None

    def _init_rebuilds(self) -> None:
        self._generation = 0
        self._last: Snapshot | None = None
        #: Per account, its part of the snapshot (see the module's docstring).
        self._parts: dict[str, Snapshot] = {}
        #: Per account and status, the starts of the streaks of the instances not running
        #: as of the account's last instance crawl, sorted, with the running total of the
        #: instances in them: counted at each rebuild's time by a bisect (audit.stale's
        #: rule), not by walking every streak of the fleet.
        self._stale_candidates: dict[str, dict[str, tuple[list[datetime], list[int]]]] = {}
        self._rebuild_lock = threading.Lock()  # one rebuild at a time
        self._marks_lock = threading.Lock()
        #: Account → the kinds committed since the rebuild that last read them.
        self._marks: dict[str, set[Kind]] = {}
        #: (account, kind) → why its last crawl could not even be recorded as failed.
        self._unrecorded: dict[tuple[str, str], str] = {}

    def mark(self, kinds: Collection[Kind], accounts: Iterable[str] | None = None) -> None:
        """Note that ``kinds`` of ``accounts`` (None: every account) changed in the store:
        the next rebuild reads them again."""
        with self._marks_lock:
            for account in self.names if accounts is None else accounts:
                if account in self.names:
                    self._marks.setdefault(account, set()).update(kinds)

    def rebuild_snapshot(self, *, kinds: Collection[Kind] = KINDS,
                         accounts: Iterable[str] | None = None) -> Snapshot:
        """Read what changed, fold it into the snapshot and install it (blocking).

        ``kinds`` of ``accounts`` (None: every account) are the records that changed (the
        crawl just committed), besides those marked by earlier commits; only those are
        read and folded again, the rest of the previous snapshot is kept. The result
        equals a rebuild of every account and kind.
        """
        self.mark(kinds, accounts)
        with self._rebuild_lock:
            return self._rebuild()

    def rebuild_marked(self) -> Snapshot:
        """Rebuild what the commits marked since the last rebuild (blocking); nothing when
        a rebuild since took every mark (the current snapshot is returned)."""
        with self._rebuild_lock:
            with self._marks_lock:
                done = not self._marks and self._last is not None
            if done:
                assert self._last is not None
                return self._last
            return self._rebuild()

    async def refresh(self, *, kinds: Collection[Kind] = KINDS,
                      accounts: Iterable[str] | None = None) -> None:
        """Mark ``kinds`` of ``accounts`` changed and rebuild in a worker thread; a store
        failure keeps the old snapshot (and the marks, for the next rebuild)."""
        self.mark(kinds, accounts)
        await self.in_thread(self.rebuild_marked)

    async def in_thread(self, rebuild: Callable[[], object]) -> None:
        """Run ``rebuild`` in a worker thread; a store failure keeps the old snapshot."""
        try:
            await asyncio.to_thread(rebuild)
        except StoreError as exc:
            log.error("metrics.refresh_failed", error=str(exc),
                      hint="the metrics keep showing the previous state")

    def _rebuild(self) -> Snapshot:
        """Rebuild (holding ``_rebuild_lock``): fold the marked accounts and kinds."""
        started = time.perf_counter()
        with self._marks_lock:
            marks, self._marks = self._marks, {}
        previous = self._last
        if previous is None:  # the first, or after a reload: every account, every kind
            self._parts.clear()
            self._stale_candidates.clear()
            marks = {name: set(KINDS) for name in self.names}
        try:
            records = self._fold(marks, previous)
        except BaseException:
            self.mark_all(marks)  # not folded: the next rebuild reads them
            raise
        self._generation += 1
        p = self.pricing
        snapshot = combine_snapshots(
            [self._parts[a] for a in sorted(self._parts)],
            generation=self._generation,
            pricing=PricingLabel(name=p.name, as_of=p.as_of, currency=p.currency,
                                 digest=p.digest),
            stale=self.stale_counts(self.clock.now()),
            findings=self.policy is not None)
        snapshot = replace(snapshot, unrecorded=dict(self._unrecorded))
        self._last = snapshot
        self.exporter.install(snapshot)
        log.info("metrics.rebuilt", generation=snapshot.generation,
                 accounts=sorted(marks) if len(marks) <= 10 else len(marks),
                 of_accounts=len(self._parts), records=records,
                 seconds=round(time.perf_counter() - started, 4))
        return snapshot

    def mark_all(self, marks: Mapping[str, Collection[Kind]]) -> None:
        """Mark every (account, kinds) of ``marks`` again."""
        for account, kinds in marks.items():
            self.mark(kinds, (account,))

    def _fold(self, marks: Mapping[str, Collection[Kind]], previous: Snapshot | None) -> int:
        """Rebuild the parts of the marked accounts; the records folded."""
        groups: dict[tuple[Kind, ...], list[str]] = {}
        for account in sorted(marks):
            # An account without a part yet has nothing to keep: read every kind.
            kinds = marks[account] if account in self._parts else KINDS
            groups.setdefault(tuple(k for k in KINDS if k in kinds), []).append(account)
        records = 0
        #: What was read, by kinds, without the records: judged once per kinds below.
        judged: dict[tuple[Kind, ...], list[AccountState]] = {}
        # Instance records are read only for per-instance series (else a few hundred counts
        # an account): only then is a read held to a few accounts.
        step = READ_ACCOUNTS if self.settings.per_instance_metrics else max(1, len(marks))
        chunks = [(kinds, group[i:i + step])
                  for kinds, group in groups.items() for i in range(0, len(group), step)]
        for kinds, accounts in chunks:
            states = self._read(kinds, accounts)
            moved = {s.account for s in states
                     if kinds != KINDS and _moved(s, self._parts[s.account], kinds)}
            if moved:
                # Another kind of these accounts committed since their part was built (its
                # own rebuild is still to come): its records cannot be reused, read them.
                states = [s for s in states if s.account not in moved]
                again = self._read(KINDS, sorted(moved))
                records += self._fold_records(KINDS, again)
                judged.setdefault(KINDS, []).extend(_bare(s) for s in again)
            for gone in set(accounts) - moved - {s.account for s in states}:
                self._parts.pop(gone, None)
                self._stale_candidates.pop(gone, None)
            records += self._fold_records(kinds, states)
            judged.setdefault(kinds, []).extend(_bare(s) for s in states)
        for kinds, states in judged.items():
            self._judge_parts(kinds, states, previous)
        return records

    def _fold_records(self, kinds: tuple[Kind, ...], states: Sequence[AccountState]) -> int:
        """Rebuild the part of each account of ``states`` (records of ``kinds`` read), but
        for its findings (:meth:`_judge_parts`); the records folded."""
        p = self.pricing
        for state in states:
            self._parts[state.account] = build_snapshot(
                [state],
                generation=0,
                instance_price=lambda i: p.instance_hourly(i.plan, i.cpu, i.memory_gb),
                bucket_price=lambda b: p.storage_hourly(b.size_bytes),
                per_bucket=self.settings.per_bucket_metrics,
                per_instance=self.settings.per_instance_metrics,
                kinds=kinds,
                previous=self._parts.get(state.account),
            )
        # Rows read: records, or instances counted by region, status and shape.
        return sum(len(s.instances) + len(s.instance_groups) + len(s.buckets) for s in states)

    def _judge_parts(self, kinds: tuple[Kind, ...], states: Sequence[AccountState],
                     previous: Snapshot | None) -> None:
        """The stale candidates (``kinds`` with instances) and the findings of the accounts
        of ``states`` (their latest crawls; records not needed), in one query each."""
        if not states:
            return
        if "instances" in kinds:
            counted: dict[str, dict[str, dict[datetime, int]]] = {s.account: {} for s in states}
            for streak in self.stale_candidates(states):
                at = counted[streak.account].setdefault(streak.status, {})
                at[streak.since] = at.get(streak.since, 0) + streak.number
            for account, by_status in counted.items():
                self._stale_candidates[account] = {
                    status: ([since for since, _ in ordered],
                             list(accumulate(n for _, n in ordered)))
                    for status, ordered in ((status, sorted(starts.items()))
                                            for status, starts in by_status.items())}
        findings = self.findings_counts(states, kinds,
                                        None if previous is None else previous.findings)
        if findings is None:
            return
        for state in states:  # build_snapshot's rule: the findings of the part's account
            self._parts[state.account] = replace(
                self._parts[state.account],
                findings={k: n for k, n in findings.items() if k[0] == state.account})

    def _read(self, kinds: tuple[Kind, ...], accounts: Sequence[str]) -> list[AccountState]:
        try:
            # Without per-instance series, the instances are only counted and summed:
            # read counted by shape (a million records took seconds to read).
            states = self.store.latest(kinds, records=self.settings.per_instance_metrics,
                                       accounts=accounts)
            return [s for s in states if s.account in self.names]
        except NoDataError:
            return []

    def stale_candidates(self, states: Sequence[AccountState]) -> list[StreakCount]:
        """The current instances not running, counted by the start of their streak."""
        seen = [s.instances_as_of for s in states if s.instances_as_of is not None]
        if not seen:
            return []
        # The window only has to hold the oldest latest instance crawl.
        since = min(seen) - timedelta(seconds=1)
        gap_instances, gap_buckets = self.settings.max_gaps()
        accounts = [s.account for s in states if s.instances_as_of is not None]
        until = max(self.clock.now(), since + timedelta(seconds=2))
        if self.rebuild_worker is not None:
            # Up to a second of Python over a long history: in a worker, off this
            # process's GIL (the event loop), over a copy taken now (the commit is in it).
            args = StreakArgs(accounts=tuple(accounts), since=since, until=until,
                              max_gap_instances=gap_instances, max_gap_buckets=gap_buckets,
                              pricing=self.pricing)
            try:
                with self.store.copy_for_reading() as copy:
                    return streak_counts_from_json(self.rebuild_worker.run(
                        streak_counts_json, (str(copy), args), Cancel()))
            except NoDataError:
                return []
        return current_streak_counts(
            self.store, accounts, since=since, until=until,
            max_gap_instances=gap_instances, max_gap_buckets=gap_buckets,
            pricing=self.pricing)

    def stale_counts(self, now: datetime) -> dict[tuple[str, str], int]:
        """Stale instances by (account, status) at ``now``, by the report's thresholds:
        those whose streak began at least the status's threshold before ``now``
        (:func:`~nexus_audit.audit.stale.is_stale`)."""
        s = self.settings
        counts: dict[tuple[str, str], int] = {}
        for account, by_status in self._stale_candidates.items():
            for status, (starts, totals) in by_status.items():
                if status == "running":  # never stale (streaks are of other statuses)
                    continue
                limit = threshold(status, stale_after=s.stale_after,
                                  pending_stale_after=s.pending_stale_after)
                n = bisect.bisect_right(starts, now - limit)
                if n:
                    counts[(account, status)] = totals[n - 1]
        return counts

    def findings_counts(self, states: Sequence[AccountState], kinds: Collection[Kind] = KINDS,
                        previous: Mapping[FindingKey, int] | None = None,
                        ) -> dict[FindingKey, int] | None:
        """Current policy findings by (account, rule, severity, status); None without one.

        Rules of a kind are judged at that kind's crawls only, so with ``kinds`` short of
        all, only the rules of ``kinds`` are judged again and the others' counts come from
        ``previous`` (judging instance rules over a large fleet's history takes seconds).
        """
        if self.policy is None:
            return None
        policy = self.policy
        kept: dict[FindingKey, int] = {}
        if "instances" not in kinds and previous is not None:
            policy = replace(policy, baseline=replace(
                policy.baseline, allowed_regions=None, required_tags=None, max_stopped=None))
            kept = {k: n for k, n in previous.items() if RULES[k[1]].kind == "instance"}
        counts = self._judge(states, policy)
        return {**kept, **counts}

    def _judge(self, states: Sequence[AccountState], policy: Policy
               ) -> dict[FindingKey, int]:
        accounts = [s.account for s in states]
        seen = [t for s in states for t in (s.instances_as_of, s.buckets_as_of) if t]
        if not seen:
            return current_counts((), policy, accounts)
        # Current findings were seen by each kind's latest crawl: the window only has to
        # reach back to the oldest of those.
        since = min(seen) - timedelta(seconds=1)
        until = max(self.clock.now(), max(seen) + timedelta(seconds=1))
        try:
            found = evaluate_history(self.store, policy, Window(since, until), accounts)
        except NoDataError:
            found = ()
        return current_counts(found, policy, accounts)

    def mark_unrecorded(self, account: str, kind: Kind, reason: str) -> Snapshot:
        """Install the current snapshot with (``account``, ``kind``)'s last crawl lost
        (blocking): the store could not record it, so nothing read from the store shows it."""
        with self._rebuild_lock:
            self._unrecorded[(account, kind)] = reason
            self._generation += 1
            base = self._last or self.holder.current
            snapshot = replace(base, generation=self._generation,
                               unrecorded=dict(self._unrecorded))
            self._last = snapshot
            self.exporter.install(snapshot)
            return snapshot


def _bare(state: AccountState) -> AccountState:
    """``state`` without its records (what the stale and findings queries need of it)."""
    return replace(state, instances=(), buckets=())


def _moved(state: AccountState, part: Snapshot, read: Collection[Kind]) -> bool:
    """Whether a kind not in ``read`` has a newer success than ``part`` shows."""
    for kind in KINDS:
        if kind in read:
            continue
        as_of = state.instances_as_of if kind == "instances" else state.buckets_as_of
        shown = part.as_of.get((state.account, kind))
        if (as_of.timestamp() if as_of else None) != shown:
            return True
    return False
