"""Prometheus metrics: inventory collectors over a snapshot, the exporter's health, /metrics.

- :mod:`~nexus_audit.metrics.snapshot`: the latest committed state, aggregated per commit;
- :mod:`~nexus_audit.metrics.inventory`: ``nexus_*`` fleet families;
- :mod:`~nexus_audit.metrics.health`: ``nexus_audit_*`` crawl and API families;
- :mod:`~nexus_audit.metrics.findings`: ``nexus_findings`` (with a policy);
- :mod:`~nexus_audit.metrics.exposition`: the registries and the cached rendering.
"""

from nexus_audit.metrics.exposition import Exporter
from nexus_audit.metrics.findings import FindingsCollector
from nexus_audit.metrics.health import (
    ApiCollector,
    BuildInfoCollector,
    CrawlStateCollector,
    CrawlStats,
    CrawlStatsCollector,
)
from nexus_audit.metrics.inventory import InventoryCollector
from nexus_audit.metrics.snapshot import (
    PricingLabel,
    Snapshot,
    SnapshotHolder,
    build_snapshot,
)

__all__ = [
    "ApiCollector",
    "BuildInfoCollector",
    "CrawlStateCollector",
    "CrawlStats",
    "CrawlStatsCollector",
    "Exporter",
    "FindingsCollector",
    "InventoryCollector",
    "PricingLabel",
    "Snapshot",
    "SnapshotHolder",
    "build_snapshot",
]
