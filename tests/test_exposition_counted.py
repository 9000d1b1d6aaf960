"""Counted families (the crawl counters): rendered again only when their version moves."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from nexus_audit.metrics import (
    BuildInfoCollector,
    CrawlStats,
    CrawlStatsCollector,
    Exporter,
    InventoryCollector,
    SnapshotHolder,
    build_snapshot,
)
from tests.test_metrics import PROD

OK_PROD = b'nexus_audit_crawls_total{account="prod",kind="instances",status="succeeded"}'


class Spy(CrawlStatsCollector):
    """The crawl-stats collector, counting how often it is asked for its samples."""

    collected = 0

    def collect(self) -> Iterator[Metric]:
        """The real samples, counted."""
        self.collected += 1
        yield from super().collect()


class Live:
    """A live family whose value changes on every scrape."""

    def __init__(self) -> None:
        self.value = 0

    def collect(self) -> Iterator[Metric]:
        """One gauge, one more each time."""
        self.value += 1
        family = GaugeMetricFamily("nexus_audit_test_live", "Moves on every scrape.")
        family.add_metric([], self.value)
        yield family


def test_counted_families_render_at_installs_and_when_their_version_moves() -> None:
    """Scrapes reuse the crawl counters rendered at the install; a crawl recorded since
    shows on the next scrape (rendered once); every body (plain, gzip, OpenMetrics) equals
    a full render of all collectors in the same order."""
    holder = SnapshotHolder()
    stats = CrawlStats(["prod", "dev"])
    spy, live = Spy(stats), Live()
    exporter = Exporter(holder, snapshot_collectors=[InventoryCollector(holder)],
                        counted_collectors=[spy],
                        live_collectors=[live, BuildInfoCollector("1.2.3")])
    exporter.install(build_snapshot([PROD], generation=1))
    base = spy.collected  # registering and the install collect it
    first, _ = exporter.render("")
    second, _ = exporter.render("")
    assert spy.collected == base
    assert first != second  # the live family moved
    assert OK_PROD + b" 0.0" in second
    stats.record("prod", ["instances"], "succeeded", 2.0)
    third = exporter.cached("", gzip=True)
    assert third is not None
    body = gzip.decompress(third[0])
    assert exporter.cached("") is not None
    assert spy.collected == base + 1
    assert OK_PROD + b" 1.0" in body
    # The same bytes as rendering every collector now (the live family one step on).
    shown = live.value - 1
    expected = generate_latest(exporter.registry).replace(
        f"nexus_audit_test_live {shown + 2}.0".encode(),
        f"nexus_audit_test_live {shown}.0".encode())
    assert body == expected
    openmetrics, _ = exporter.render("application/openmetrics-text; version=1.0.0")
    assert openmetrics.count(b"# EOF") == 1
    assert openmetrics.index(b"nexus_audit_crawls_total") < openmetrics.index(
        b"nexus_audit_test_live")
    base = spy.collected
    exporter.install(build_snapshot([PROD], generation=2))
    exporter.render("")
    exporter.render("application/openmetrics-text; version=1.0.0")
    assert spy.collected == base + 2  # at the install, once per format asked for
