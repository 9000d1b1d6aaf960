"""The /metrics body: the snapshot's families rendered once per snapshot, the rest live.

Rendering is the expensive part of a scrape, not collecting: prometheus-client formats
about 120,000 samples a second, so 5,000 buckets' two per-bucket series alone would take
~85 ms a scrape. The snapshot changes only when a crawl commits, so its families are
rendered once per snapshot and format, in the thread that installs the snapshot (for the
default text format and every format a scrape asked for before), and the bytes reused; the
small live families (counters that move between commits) are rendered on every scrape and
appended.

A scrape is served on the event loop, never in a worker thread (:meth:`Exporter.cached`):
worker threads are shared with commits and snapshot rebuilds, and a scrape queued behind
them took seconds. Serving from the cache only appends the live part (well under a
millisecond). The gzip encoding is cached too: the snapshot part is compressed once, and
each scrape copies the compressor's state and feeds it the live part
(``zlib.Compress.copy``), so a gzipped scrape is one stream and costs no more than the live
part (aiohttp would otherwise compress a large body in a worker thread on every scrape).
Only a format no scrape asked for under this snapshot yet has to be rendered in full, once
(:meth:`Exporter.render`, in a worker thread).

``registry`` holds every collector as well, for tests (``get_sample_value``) and tools.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from nexus_audit.metrics.snapshot import Snapshot, SnapshotHolder

_EOF: Final = b"# EOF\n"
#: zlib's window bits for a gzip stream (header and trailer included).
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_GZIP_LEVEL: Final = 6
Encoder = Callable[[CollectorRegistry], bytes]


@dataclass(frozen=True, slots=True)
class _Part:
    """The snapshot's families in one format: plain, and the start of a gzip stream."""

    plain: bytes
    #: What the compressor emitted for ``plain`` so far; ``compressor`` holds the rest.
    gzip_head: bytes
    compressor: zlib._Compress

    @classmethod
    def of(cls, plain: bytes) -> _Part:
        compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
        return cls(plain, compressor.compress(plain), compressor)

    def gzip(self, live: bytes) -> bytes:
        """One gzip stream of ``plain + live`` (the compressor itself is left as it was)."""
        compressor = self.compressor.copy()
        return self.gzip_head + compressor.compress(live) + compressor.flush()


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
        # Serializes installs and full renders (both render ``holder.current``); scrapes
        # served from the cache never take it, so they never wait for a render.
        self._lock = threading.Lock()
        #: (snapshot generation, {content type: its part}); replaced whole, read unlocked.
        self._cache: tuple[int, dict[str, _Part]] = (-1, {})
        #: Content type -> an Accept header choosing it: the formats scrapes asked for,
        #: each rendered ahead by the next install.
        self._formats: dict[str, str] = {choose_encoder("")[1]: ""}

    def install(self, snapshot: Snapshot) -> bool:
        """Swap ``snapshot`` in and pre-render it in every format asked for so far (call
        in a thread: this is the expensive part).

        False (and nothing changes) when a newer snapshot is already installed.
        """
        with self._lock:
            if not self.holder.swap(snapshot):
                return False
            parts = {}
            for content_type, accept in list(self._formats.items()):
                encoder, _ = choose_encoder(accept)
                parts[content_type] = _Part.of(self._strip_eof(encoder(self.snapshot_registry)))
            # Until this line scrapes get the previous snapshot's bytes: whole, one snapshot.
            self._cache = (snapshot.generation, parts)
        return True

    def cached(self, accept: str, *, gzip: bool = False) -> tuple[bytes, str] | None:
        """The body and content type for a scrape with this ``Accept`` header, from the
        cache (cheap: for the event loop); gzip-encoded when ``gzip``. None when this
        format is not rendered for the current snapshot yet (then call :meth:`render`)."""
        encoder, content_type = choose_encoder(accept)
        _, parts = self._cache
        part = parts.get(content_type)
        if part is None:
            return None
        live = encoder(self.live_registry)
        return (part.gzip(live) if gzip else part.plain + live), content_type

    def render(self, accept: str) -> tuple[bytes, str]:
        """The body and content type for a scrape with this ``Accept`` header, rendering
        the snapshot part if it is not cached (blocking: call in a worker thread)."""
        encoder, content_type = choose_encoder(accept)
        with self._lock:
            self._formats.setdefault(content_type, accept)
            generation, parts = self._cache
            current = self.holder.current.generation
            if generation != current:
                parts = {}  # nothing installed yet: the holder's initial snapshot
            if content_type not in parts:
                part = _Part.of(self._strip_eof(encoder(self.snapshot_registry)))
                self._cache = (current, {**parts, content_type: part})
        body = self.cached(accept)
        assert body is not None  # cached under the lock just now
        return body

    @staticmethod
    def _strip_eof(body: bytes) -> bytes:
        return body[: -len(_EOF)] if body.endswith(_EOF) else body
