"""Where ``serve``'s reports come from: :class:`StoreReports`, the source of ``/report``
and ``/report.html`` over the store (in a report slot's thread, or a worker process)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus_audit.config import Settings
from nexus_audit.domain.policy import Policy
from nexus_audit.domain.pricing import Pricing
from nexus_audit.domain.timeutil import Clock
from nexus_audit.history.cancel import Cancel
from nexus_audit.history.store import Store
from nexus_audit.service.web import ReportQuery
from nexus_audit.service.workers import (
    ReportArgs,
    ReportWorkers,
    report_dict,
    report_html,
    report_json,
    report_page,
)


class StoreReports:
    """The /report source: ``build_report`` over copies of the store (so a report never
    keeps a commit waiting; see :meth:`nexus_audit.history.copies.Copies.reading_copy`),
    called in a report slot's thread; with ``workers``, computed in a worker process (so it
    never holds this process's GIL; see :mod:`nexus_audit.service.workers`)."""

    def __init__(self, store: Store, settings: Settings, pricing: Pricing, clock: Clock,
                 policy: Policy | None = None, *, workers: ReportWorkers | None = None) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._judged = (pricing, policy)
        self._workers = workers

    def use(self, pricing: Pricing, policy: Policy | None) -> None:
        """Judge later reports by ``pricing`` and ``policy`` (swapped as one, for a report
        running in another thread)."""
        self._judged = (pricing, policy)

    @property
    def accounts(self) -> tuple[str, ...]:
        """The configured account names."""
        return tuple(a.name for a in self._settings.accounts)

    def args(self, query: ReportQuery) -> ReportArgs:
        """The report's arguments for ``query`` under the settings, pricing and policy."""
        s = self._settings
        pricing, policy = self._judged
        return ReportArgs(
            window=query.window,
            accounts=(query.account,) if query.account else self.accounts,
            stale_after=query.stale_after or s.stale_after,
            pending_stale_after=s.pending_stale_after,
            max_gap_instances=s.max_gaps()[0], max_gap_buckets=s.max_gaps()[1],
            pricing=pricing,
            now=self._clock.now(),
            policy=policy,
        )

    def report(self, query: ReportQuery,
               cancel: Cancel | None = None) -> Mapping[str, Any] | bytes:
        """The report JSON for ``query`` (bytes when a worker made it). Interrupted by
        ``cancel``: in a worker through it, here by the ``cancel.cancellable`` the
        caller bound (the reads take it from there)."""
        args = self.args(query)
        if self._workers is None:
            return report_dict(self._store.copied(), args)
        with self._store.copy_for_reading() as copy:
            return self._workers.run(report_json, (str(copy), args), cancel or Cancel())

    def report_html(self, query: ReportQuery, cancel: Cancel | None = None) -> bytes:
        """The HTML report for ``query`` (the same report with its daily series), UTF-8,
        computed like :meth:`report`."""
        args = self.args(query)
        if self._workers is None:
            return report_page(self._store.copied(), args)
        with self._store.copy_for_reading() as copy:
            return self._workers.run(report_html, (str(copy), args), cancel or Cancel())

    def close(self) -> None:
        """Stop the report workers, if any."""
        if self._workers is not None:
            self._workers.close()
