"""The /metrics body: the snapshot's families rendered once per snapshot, the rest live.

Rendering is the expensive part of a scrape, not collecting: prometheus-client formats
about 120,000 samples a second, so 5,000 buckets' two per-bucket series alone would take
~85 ms a scrape. The snapshot changes only when a crawl commits, so its families are
rendered once per snapshot and format (eagerly for the default text format, in the thread
that built the snapshot) and the bytes reused; the small live families (counters that
move between commits) are rendered on every scrape and appended.

``registry`` holds every collector as well, for tests (``get_sample_value``) and tools.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from nexus_audit.metrics.snapshot import Snapshot, SnapshotHolder

_EOF: Final = b"# EOF\n"
Encoder = Callable[[CollectorRegistry], bytes]


class Exporter:
    """The exporter's registries and the cached rendering of the current snapshot."""

    def __init__(
        self,
        holder: SnapshotHolder,
        *,
        snapshot_collectors: Iterable[Collector],
        live_collectors: Iterable[Collector],
    ) -> None:
        self.holder = holder
        self.snapshot_registry = CollectorRegistry(auto_describe=True)
        self.live_registry = CollectorRegistry(auto_describe=True)
        #: Every collector: what one scrape shows, for tests and tools.
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in snapshot_collectors:
            self.snapshot_registry.register(collector)
            self.registry.register(collector)
        for collector in live_collectors:
            self.live_registry.register(collector)
            self.registry.register(collector)
        self._lock = threading.Lock()
        # (snapshot generation, {content type: rendered bytes without "# EOF"}).
        self._cache: tuple[int, dict[str, bytes]] = (-1, {})

    def install(self, snapshot: Snapshot) -> bool:
        """Swap ``snapshot`` in and pre-render it in the default format (call in a thread).

        False (and nothing changes) when a newer snapshot is already installed.
        """
        encoder, content_type = choose_encoder("")
        with self._lock:
            if not self.holder.swap(snapshot):
                return False
            part = self._strip_eof(encoder(self.snapshot_registry))
            self._cache = (snapshot.generation, {content_type: part})
        return True

    def render(self, accept: str) -> tuple[bytes, str]:
        """The body and content type for a scrape with this ``Accept`` header."""
        encoder, content_type = choose_encoder(accept)
        # Swaps and renders share the lock, so the cached bytes always belong to the
        # snapshot the holder shows.
        with self._lock:
            generation, cached = self._cache
            part = cached.get(content_type) if generation == self.holder.current.generation \
                else None
            if part is None:
                part = self._strip_eof(encoder(self.snapshot_registry))
                if generation != self.holder.current.generation:
                    cached = {}
                    self._cache = (self.holder.current.generation, cached)
                cached[content_type] = part
        return part + encoder(self.live_registry), content_type

    @staticmethod
    def _strip_eof(body: bytes) -> bytes:
        return body[: -len(_EOF)] if body.endswith(_EOF) else body
