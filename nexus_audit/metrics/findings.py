"""``nexus_findings``: current policy findings, from the snapshot (only with a policy)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily

from nexus_audit.metrics.exposition import SnapshotCollector
from nexus_audit.metrics.snapshot import SnapshotHolder


class FindingsCollector(SnapshotCollector):
    """Findings still seen by the latest crawls, by account, rule, severity and status.

    Emits nothing without a policy; with one, every rule it switches on has a series per
    account (zero when nothing breaks it; ``accepted`` and ``expired`` for bucket rules)::

        nexus_findings{account="prod",rule="bucket.public",severity="high",status="open"} 2
        nexus_findings{account="prod",rule="bucket.public",severity="critical",status="expired"} 1
        nexus_findings{account="prod",rule="instance.required_tags",severity="low",status="open"} 7
    """

    def __init__(self, holder: SnapshotHolder) -> None:
        self._holder = holder

    def over(self, holder: SnapshotHolder) -> FindingsCollector:
        """The same collector reading ``holder`` (to render one account's slice)."""
        return FindingsCollector(holder)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield ``nexus_findings`` when the snapshot carries findings."""
        counts = self._holder.current.findings
        if counts is None:
            return
        family = GaugeMetricFamily(
            "nexus_findings",
            "Current policy findings by account, rule, severity and status "
            "(open, accepted, expired).",
            labels=["account", "rule", "severity", "status"])
        for key, n in sorted(counts.items()):
            family.add_metric(list(key), n)
        yield family
