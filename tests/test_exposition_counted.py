"""Counted families (the crawl counters): rendered again only when their version moves."""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

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
    """The crawl-stats collector, noting each account whose series it renders (None: the
    headers alone, "*": every account's), slices included."""

    def __init__(self, stats: CrawlStats, *, only: str | None = None, none: bool = False,
                 log: list[str | None] | None = None) -> None:
        super().__init__(stats, only=only, none=none)
        self.log: list[str | None] = [] if log is None else log
        self.only = None if none else only or "*"

    @property
    def collected(self) -> int:
        """Renders of some account's series so far (not of the headers alone)."""
        return sum(1 for a in self.log if a is not None)

    def sliced(self, account: str | None) -> Spy:
        """A slice noting its renders in the same log."""
        return Spy(self._stats, only=account, none=account is None, log=self.log)

    def collect(self) -> Iterator[Metric]:
        """The real samples, noted."""
        self.log.append(self.only)
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
    shows on the next scrape (its account's series rendered once, the others' reused);
    every body (plain, gzip, OpenMetrics) equals
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
    assert spy.log[-1] == "prod"
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
    # At the install, once per format asked for: the first render of OpenMetrics renders
    # both accounts, the install then neither (no crawl was recorded since).
    assert spy.collected == base
    stats.record("dev", ["buckets"], "failed", 1.0)
    exporter.install(build_snapshot([PROD], generation=3))
    assert spy.collected == base + 2
    assert [a for a in spy.log if a is not None][-2:] == ["dev", "dev"]
    assert _steady(exporter.render("")[0]) == _steady(generate_latest(exporter.registry))


def _steady(body: bytes) -> list[bytes]:
    """The lines of a body but the live family's sample (it moves on every scrape)."""
    return [row for row in body.split(b"\n") if not row.startswith(b"nexus_audit_test_live ")]


def test_counted_slices_merge_to_one_render_of_every_account() -> None:
    """Over random crawls recorded across accounts (one not configured, so first seen
    late), the counted families merged from per-account slices are byte for byte one
    render of every collector, plain, gzip (segments of one stream) and OpenMetrics."""
    rng = random.Random(7)
    holder = SnapshotHolder()
    stats = CrawlStats(["prod", "dev", "b-team"])
    exporter = Exporter(holder, snapshot_collectors=[InventoryCollector(holder)],
                        counted_collectors=[CrawlStatsCollector(stats)],
                        live_collectors=[BuildInfoCollector("1.2.3")])
    exporter.install(build_snapshot([PROD], generation=1))
    openmetrics = "application/openmetrics-text; version=1.0.0"
    exporter.render(openmetrics)
    for step in range(40):
        stats.record(rng.choice(["prod", "dev", "b-team", "zz-late"]),
                     rng.sample(["instances", "buckets"], rng.randint(1, 2)),
                     rng.choice(["succeeded", "failed"]), rng.uniform(0.1, 4000))
        if step % 7 == 0:
            exporter.install(build_snapshot([PROD], generation=step + 2))
        zipped = exporter.cached("", gzip=True)
        plain = exporter.cached("")
        om = exporter.cached(openmetrics)
        assert zipped is not None
        assert plain is not None
        assert om is not None
        assert gzip.decompress(zipped[0]) == plain[0] == generate_latest(exporter.registry)
        assert om[0] == openmetrics_latest(exporter.registry)
