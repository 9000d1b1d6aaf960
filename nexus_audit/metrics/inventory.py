"""Collectors over the current :class:`~nexus_audit.metrics.snapshot.Snapshot`.

Each scrape yields fresh metric families built from the snapshot in force when the scrape
began; nothing here reads the database or the API.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily

from nexus_audit.domain.exposure import is_exposed
from nexus_audit.domain.model import KINDS
from nexus_audit.metrics.exposition import SnapshotCollector
from nexus_audit.metrics.snapshot import SnapshotHolder


class InventoryCollector(SnapshotCollector):
    """Counts, sizes, cost and staleness of the fleet as of the latest successful crawls.

    Emits (per-bucket series unless switched off, per-instance series only if on)::

        nexus_instances{account="prod",region="us-east-1",status="running"} 42
        nexus_instance_vcpus{account="prod",region="us-east-1",status="running"} 96
        nexus_instance_memory_bytes{account="prod",region="us-east-1",status="running"} 3.84e+11
        nexus_buckets{account="prod",region="us-east-1",access="private"} 7
        nexus_buckets_size_bytes{account="prod",region="us-east-1",access="private"} 1.2e+12
        nexus_public_buckets{account="prod"} 1
        nexus_bucket_size_bytes{account="prod",bucket="bkt-1",region="us-east-1"} 5.0e+09
        nexus_bucket_public{account="prod",bucket="bkt-1",region="us-east-1",access="public"} 1
        nexus_instance_info{account="prod",instance="i-1",name="web-1",region="us-east-1",
                            status="running",plan="micro"} 1
        nexus_cost_hourly{account="prod",region="us-east-1",kind="compute"} 1.92
        nexus_pricing_info{name="example list prices",as_of="2026-01-01",currency="USD",
                           digest="sha256:..."} 1
        nexus_stale_instances{account="prod",status="stopped"} 3
        nexus_inventory_timestamp_seconds{account="prod",kind="instances"} 1.7e+09
    """

    def __init__(self, holder: SnapshotHolder) -> None:
        self._holder = holder

    def over(self, holder: SnapshotHolder) -> InventoryCollector:
        """The same collector reading ``holder`` (to render one account's slice)."""
        return InventoryCollector(holder)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the inventory families of the current snapshot."""
        snap = self._holder.current
        ars = ["account", "region", "status"]
        count = GaugeMetricFamily("nexus_instances", "Instances by account, region and status.",
                                  labels=ars)
        vcpus = GaugeMetricFamily("nexus_instance_vcpus", "vCPUs of instances.", labels=ars)
        memory = GaugeMetricFamily("nexus_instance_memory_bytes",
                                   "Memory of instances in bytes (1 GB = 10^9 bytes).", labels=ars)
        for key, inst in sorted(snap.instances.items()):
            labels = list(key)
            count.add_metric(labels, inst.count)
            vcpus.add_metric(labels, inst.vcpus)
            memory.add_metric(labels, inst.memory_bytes)
        yield count
        yield vcpus
        yield memory

        ara = ["account", "region", "access"]
        buckets = GaugeMetricFamily("nexus_buckets", "Buckets by account, region and access.",
                                    labels=ara)
        size = GaugeMetricFamily("nexus_buckets_size_bytes",
                                 "Bytes stored in buckets by account, region and access.",
                                 labels=ara)
        for key, totals in sorted(snap.buckets.items()):
            buckets.add_metric(list(key), totals.count)
            size.add_metric(list(key), totals.size_bytes)
        yield buckets
        yield size

        public = GaugeMetricFamily("nexus_public_buckets",
                                   "Buckets whose access is anything but private.",
                                   labels=["account"])
        for account, n in sorted(snap.public_buckets.items()):
            public.add_metric([account], n)
        yield public

        if snap.bucket_series:
            bsize = GaugeMetricFamily("nexus_bucket_size_bytes", "Bytes stored in one bucket.",
                                      labels=["account", "bucket", "region"])
            exposed = GaugeMetricFamily(
                "nexus_bucket_public",
                "1 when the bucket is exposed (any access but private), else 0.",
                labels=["account", "bucket", "region", "access"])
            for account, bucket, region, access, nbytes in snap.bucket_series:
                bsize.add_metric([account, bucket, region], nbytes)
                exposed.add_metric([account, bucket, region, access],
                                   1 if is_exposed(access) else 0)
            yield bsize
            yield exposed

        if snap.instance_series:
            info = GaugeMetricFamily(
                "nexus_instance_info", "One series per instance, value 1.",
                labels=["account", "instance", "name", "region", "status", "plan"])
            for row in snap.instance_series:
                info.add_metric(list(row), 1)
            yield info

        cost = GaugeMetricFamily(
            "nexus_cost_hourly",
            "Hourly cost run-rate in the pricing currency (kind compute or storage).",
            labels=["account", "region", "kind"])
        for key, value in sorted(snap.cost_hourly.items()):
            cost.add_metric(list(key), value)
        yield cost

        pricing = GaugeMetricFamily("nexus_pricing_info",
                                    "The price list behind nexus_cost_hourly, value 1.",
                                    labels=["name", "as_of", "currency", "digest"])
        if snap.pricing is not None:
            p = snap.pricing
            pricing.add_metric([p.name, p.as_of, p.currency, p.digest], 1)
        yield pricing

        stale = GaugeMetricFamily(
            "nexus_stale_instances",
            "Instances not running for at least the stale threshold (7d; pending 1h).",
            labels=["account", "status"])
        for skey, n in sorted(snap.stale.items()):
            stale.add_metric(list(skey), n)
        yield stale

        as_of = GaugeMetricFamily(
            "nexus_inventory_timestamp_seconds",
            "When the state shown was observed (the latest successful crawl of the kind).",
            labels=["account", "kind"])
        for account in snap.accounts:
            for kind in KINDS:
                if (account, kind) in snap.as_of:
                    as_of.add_metric([account, kind], snap.as_of[(account, kind)])
        yield as_of
