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
millisecond). The gzip encoding is cached too: one gzip stream whose deflate data is a
series of segments, each compressed on its own and ended on a byte boundary (a sync
flush), so the snapshot part is compressed once (level 6), and a scrape compresses only
the live part (level 1) and appends it and the trailer (the CRC-32 carried on from the
cached part's): it costs no more than the live part (aiohttp would otherwise compress a
large body in a worker thread on every scrape).
Only a format no scrape asked for under this snapshot yet has to be rendered in full, once
(:meth:`Exporter.render`, in a worker thread).

Counted families sit between the two: process-life counters that move only at known
moments (the crawl counters and duration histograms, when a crawl finishes), each
collector with a ``version()`` that changes when they do. They grow with the accounts (a
histogram of 14 series per account and kind: 3,600 samples and ~27 ms of rendering at a
hundred accounts), so they are rendered at each install (in ``serve`` every crawl counted
is followed by one) and appended to the snapshot part (a segment of its gzip stream); a
scrape renders them only when their version moved since (between a crawl and its
install). A :class:`SlicedCollector` (the crawl counters) is rendered per account and
merged as the snapshot's slices are: only the accounts whose versions moved are rendered
again, so the scrape that follows a crawl renders its account's 36 series and compresses
the counted segment at level 1 (~2.5 ms of CPU at a hundred accounts, ~28 ms before).

``registry`` holds every collector as well, for tests (``get_sample_value``) and tools.
"""

from __future__ import annotations

import struct
import threading
import zlib
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from nexus_audit.metrics.slices import Block, SliceCache, blocks, merge
from nexus_audit.metrics.snapshot import Snapshot, SnapshotHolder

_EOF: Final = b"# EOF\n"
#: A gzip member's header: deflate, no name, no time, unknown OS (RFC 1952).
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
#: zlib's level for what is compressed once per snapshot (in the installing thread), and
#: for what a scrape compresses on the event loop (the live families; the counted ones
#: when a crawl was counted since the install): level 1 is ten times faster.
_GZIP_LEVEL: Final = 6
_LIVE_LEVEL: Final = 1
Encoder = Callable[[CollectorRegistry], bytes]


def _deflate(data: bytes, level: int) -> bytes:
    """``data`` as raw deflate blocks ending on a byte boundary (sync flush), so that more
    segments, each from a compressor of its own, can follow in the same stream."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


@dataclass(frozen=True, slots=True)
class _Part:
    """The snapshot's families in one format: plain, and the start of a gzip stream (its
    deflate segments, each compressed on its own, and the CRC-32 of ``plain``)."""

    plain: bytes
    deflated: bytes
    crc: int

    @classmethod
    def of(cls, plain: bytes, level: int = _GZIP_LEVEL) -> _Part:
        return cls(plain, _deflate(plain, level), zlib.crc32(plain))

    def gzip(self, live: bytes) -> bytes:
        """One gzip stream of ``plain + live``: the cached segments, ``live`` compressed
        as the last (cheaply: it is compressed on every scrape), the trailer."""
        compressor = zlib.compressobj(_LIVE_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        size = (len(self.plain) + len(live)) & 0xFFFFFFFF
        return b"".join((_GZIP_HEADER, self.deflated, compressor.compress(live),
                         compressor.flush(), struct.pack("<II", zlib.crc32(live, self.crc),
                                                         size)))

    def extended(self, more: bytes, level: int = _GZIP_LEVEL) -> _Part:
        """This part followed by ``more``, as a segment of its own (this one is left as
        it was)."""
        return _Part(self.plain + more, self.deflated + _deflate(more, level),
                     zlib.crc32(more, self.crc))


class SnapshotCollector(Collector):
    """A collector of the snapshot's families that can also read another holder."""

    @abstractmethod
    def over(self, holder: SnapshotHolder) -> SnapshotCollector:
        """The same collector reading ``holder``'s snapshot."""


class CountedCollector(Collector):
    """A collector whose samples change only when its ``version()`` does."""

    @abstractmethod
    def version(self) -> int:
        """A number that changes whenever the samples may have."""


class SlicedCollector(CountedCollector):
    """A counted collector whose every series is one account's, ordered by account first,
    that can render one account's series alone: a crawl recorded re-renders only its
    account's (the others' bytes are reused and merged, :mod:`~nexus_audit.metrics.slices`)."""

    @abstractmethod
    def versions(self) -> Mapping[str, int]:
        """Per account with series: a number that changes whenever they may have."""

    @abstractmethod
    def sliced(self, account: str | None) -> Collector:
        """The same families with ``account``'s series alone (None: none, headers only)."""


class Exporter:
    """The exporter's registries and the cached rendering of the current snapshot."""

    def __init__(
        self,
        holder: SnapshotHolder,
        *,
        snapshot_collectors: Iterable[Collector],
        live_collectors: Iterable[Collector],
        counted_collectors: Iterable[CountedCollector] = (),
    ) -> None:
        self.holder = holder
        self.snapshot_registry = CollectorRegistry(auto_describe=True)
        self.counted_registry = CollectorRegistry(auto_describe=True)
        self.live_registry = CollectorRegistry(auto_describe=True)
        #: Every collector: what one scrape shows, for tests and tools.
        self.registry = CollectorRegistry(auto_describe=True)
        self._counted = tuple(counted_collectors)
        chosen = list(snapshot_collectors)
        for collector in chosen:
            self.snapshot_registry.register(collector)
            self.registry.register(collector)
        #: Renders the snapshot's families per account and reuses the unchanged ones
        #: (:mod:`~nexus_audit.metrics.slices`), when every collector can read a slice.
        self.slices: SliceCache | None = None
        self._scratch = SnapshotHolder()
        self._slice_registry = CollectorRegistry(auto_describe=False)
        if all(isinstance(c, SnapshotCollector) for c in chosen):
            for collector in chosen:
                assert isinstance(collector, SnapshotCollector)  # for mypy
                self._slice_registry.register(collector.over(self._scratch))
            self.slices = SliceCache(self._render_slice)
        for collector in self._counted:
            self.counted_registry.register(collector)
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
        #: Content type -> ((generation, counted versions), the snapshot part followed by
        #: the counted families); replaced whole, read unlocked.
        self._steady: dict[str, tuple[tuple[int, tuple[int, ...]], _Part]] = {}
        #: Content type -> account -> (its versions, its counted families rendered), when
        #: every counted collector is sliced; replaced whole, read unlocked.
        self._counted_slices: dict[str, dict[str, tuple[tuple[int, ...], list[Block]]]] = {}

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
                parts[content_type] = _Part.of(self._snapshot_body(accept))
            # The counted families too, here rather than on the next scrape: in serve each
            # crawl counted is followed by an install.
            steady = {content_type: self._steady_part(snapshot.generation, part,
                                                      self._formats[content_type])
                      for content_type, part in parts.items()} if self._counted else {}
            # Until this line scrapes get the previous snapshot's bytes: whole, one snapshot.
            self._cache = (snapshot.generation, parts)
            self._steady = steady
        return True

    def _steady_part(self, generation: int, part: _Part, accept: str, *,
                     level: int = _GZIP_LEVEL) -> tuple[tuple[int, tuple[int, ...]], _Part]:
        """``part`` followed by the counted families, with the key it is good for."""
        # The versions first: a count moving during the render shows as a new version on
        # the next scrape, never as old bytes under the new version.
        key = (generation, tuple(c.version() for c in self._counted))
        return key, part.extended(self._counted_body(accept), level)

    def _counted_body(self, accept: str) -> bytes:
        """The counted families in the format ``accept`` asks for: per account when every
        counted collector is sliced (only the accounts whose versions moved rendered
        again), else in one render."""
        encoder, content_type = choose_encoder(accept)
        sliced = [c for c in self._counted if isinstance(c, SlicedCollector)]
        if len(sliced) != len(self._counted):
            return self._strip_eof(encoder(self.counted_registry))
        # The versions before the samples, as in _steady_part.
        versions = [c.versions() for c in sliced]
        accounts = sorted(set().union(*versions))
        previous = self._counted_slices.get(content_type, {})
        kept: dict[str, tuple[tuple[int, ...], list[Block]]] = {}
        heads = blocks(self._render_counted(sliced, None, encoder))
        renders = [heads]
        for account in accounts:
            key = tuple(v.get(account, -1) for v in versions)
            hit = previous.get(account)
            if hit is None or hit[0] != key:
                hit = (key, blocks(self._render_counted(sliced, account, encoder)))
            kept[account] = hit
            renders.append(hit[1])
        self._counted_slices = {**self._counted_slices, content_type: kept}
        return merge(renders, [name for name, _, _ in heads])

    def _render_counted(self, sliced: Iterable[SlicedCollector], account: str | None,
                        encoder: Encoder) -> bytes:
        """The counted families with ``account``'s series alone (None: headers only)."""
        registry = CollectorRegistry(auto_describe=False)
        for collector in sliced:
            registry.register(collector.sliced(account))
        return self._strip_eof(encoder(registry))

    def cached(self, accept: str, *, gzip: bool = False) -> tuple[bytes, str] | None:
        """The body and content type for a scrape with this ``Accept`` header, from the
        cache (cheap: for the event loop); gzip-encoded when ``gzip``. None when this
        format is not rendered for the current snapshot yet (then call :meth:`render`)."""
        encoder, content_type = choose_encoder(accept)
        generation, parts = self._cache
        part = parts.get(content_type)
        if part is None:
            return None
        if self._counted:
            key = (generation, tuple(c.version() for c in self._counted))
            steady = self._steady.get(content_type)
            if steady is None or steady[0] != key:  # a crawl counted since the install
                # On the loop: that crawl's account rendered, the segment compressed fast.
                steady = self._steady_part(generation, part, accept, level=_LIVE_LEVEL)
                self._steady = {**self._steady, content_type: steady}
            part = steady[1]
        live = encoder(self.live_registry)
        return (part.gzip(live) if gzip else part.plain + live), content_type

    def render(self, accept: str) -> tuple[bytes, str]:
        """The body and content type for a scrape with this ``Accept`` header, rendering
        the snapshot part if it is not cached (blocking: call in a worker thread)."""
        content_type = choose_encoder(accept)[1]
        with self._lock:
            self._formats.setdefault(content_type, accept)
            generation, parts = self._cache
            current = self.holder.current.generation
            if generation != current:
                parts = {}  # nothing installed yet: the holder's initial snapshot
            if content_type not in parts:
                part = _Part.of(self._snapshot_body(accept))
                self._cache = (current, {**parts, content_type: part})
        body = self.cached(accept)
        assert body is not None  # cached under the lock just now
        return body

    def _snapshot_body(self, accept: str) -> bytes:
        """The current snapshot's families in the format ``accept`` asks for (holding
        ``_lock``): per account when the collectors allow it, else in one render."""
        encoder, content_type = choose_encoder(accept)
        if self.slices is None:
            return self._strip_eof(encoder(self.snapshot_registry))
        return self.slices.body(self.holder.current, accept, content_type)

    def _render_slice(self, piece: Snapshot, accept: str) -> bytes:
        """One slice's families (holding ``_lock``: the scratch holder is shared)."""
        self._scratch.swap(piece)
        return self._strip_eof(choose_encoder(accept)[0](self._slice_registry))

    @staticmethod
    def _strip_eof(body: bytes) -> bytes:
        return body[: -len(_EOF)] if body.endswith(_EOF) else body
