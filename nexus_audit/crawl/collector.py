"""What a crawl keeps of the records it is handed: each API answer's items validated, the
key scrubbed, repeats dropped or refused, the rest handed to the sink in batches.

Only the ids seen stay in memory, each with a compact fingerprint (40 bits of the record's
hash and the index of the answer it came in: one int, no record kept). The rules for an
id seen twice are the crawl's (see :mod:`nexus_audit.crawl.crawler`, "Duplicates").

An answer is taken as a whole where it can be: its items converted in order, one test of
the page for the key (:func:`~nexus_audit.api.untrusted.redact_page`), and one test of its
ids against those seen; only an answer with an id seen before (or twice in it) is taken
record by record. Either way the outcome is that of taking the items one by one: the
same records in the same batches, the same error for the first fault (a conflict among
the records before an invalid item is raised before it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Final, Generic, TypeVar

from nexus_audit.api.client import CloudNexusClient
from nexus_audit.api.untrusted import redact_page
from nexus_audit.crawl.progress import CrawlProgress
from nexus_audit.domain.model import Bucket, Instance, InvalidRecordError, Kind
from nexus_audit.errors import DuplicateConflictError

_SAMPLE: Final = 5
#: Bits of a record's hash kept as its fingerprint; the answer's index goes above them.
#: Two different copies of one id pass as the same with odds of 2**-40.
_FP_BITS: Final = 40
_FP_MASK: Final = (1 << _FP_BITS) - 1
_record_id: Final = itemgetter(0)

R = TypeVar("R", Instance, Bucket)


class Collector(Generic[R]):
    """Validates raw items, drops identical repeats, fails on conflicting ones, and hands
    batches to the sink."""

    def __init__(
        self,
        kind: Kind,
        convert: Callable[[object], R],
        emit: Callable[[Sequence[R]], None],
        client: CloudNexusClient,
        progress: CrawlProgress | None,
        batch_size: int,
    ) -> None:
        self.kind = kind
        self._convert: Callable[[object], R] = convert
        self._emit: Callable[[Sequence[R]], None] = emit
        self._client = client
        self._secret = client.account.api_key.reveal()
        self._progress = progress
        self._batch_size = batch_size
        self._batch: list[R] = []
        #: id -> (answer index << _FP_BITS) | fingerprint: one int per id, not the record.
        self._seen: dict[str, int] = {}
        #: Per answer added: its request id and the walk phase it belongs to.
        self._answers: list[tuple[str | None, int]] = []
        #: The walk phase: 0 for the first walks, 1 for the fan-out's unfiltered fallback,
        #: whose copies may supersede (not contradict) the earlier phase's.
        self.phase = 0
        self.duplicates = 0
        self.duplicate_sample: list[str] = []
        self.superseded = 0
        self.superseded_sample: list[str] = []

    @property
    def count(self) -> int:
        """Unique records collected."""
        return len(self._seen)

    def add(self, items: Sequence[object], request_id: str | None = None) -> None:
        """Take one answer's raw items; :class:`InvalidRecordError` on the first bad one,
        :class:`DuplicateConflictError` on an id seen before with other contents."""
        answer = len(self._answers)
        self._answers.append((request_id, self.phase))
        records: list[R] = []
        failure: Exception | None = None
        convert = self._convert
        try:
            for item in items:
                records.append(convert(item))
        except Exception as exc:  # raised once the records before the item are taken
            failure = exc
        if records:
            self._take(redact_page(records, self._secret), answer << _FP_BITS, request_id)
        if failure is not None:
            if isinstance(failure, InvalidRecordError):
                self._client.count_invalid(self.kind)
                failure.request_id = request_id  # the answer it came in, for support
            raise failure
        if self._progress is not None:
            self._progress.records[self.kind] = len(self._seen)

    def _take(self, records: list[R], tag: int, request_id: str | None) -> None:
        """Take one answer's records: at once when none of their ids was seen before (nor
        twice among them), else one by one."""
        marks = [tag | (hash(record) & _FP_MASK) for record in records]
        fresh = dict(zip(map(_record_id, records), marks, strict=True))
        seen = self._seen
        if len(fresh) == len(records) and seen.keys().isdisjoint(fresh.keys()):
            seen.update(fresh)
            batch = self._batch
            batch.extend(records)
            size = self._batch_size
            if len(batch) >= size:
                # The batches taking the records one by one hands over: each as it fills.
                full = len(batch) - len(batch) % size
                self._batch = batch[full:]
                for start in range(0, full, size):
                    self._emit(batch[start:start + size])
            return
        for record, mark in zip(records, marks, strict=True):
            self._take_one(record, mark, request_id)

    def _take_one(self, record: R, mark: int, request_id: str | None) -> None:
        seen = self._seen
        fingerprint = mark & _FP_MASK
        before = seen.get(record.id)
        if before is None:
            seen[record.id] = mark
        elif before & _FP_MASK == fingerprint:
            self.duplicates += 1
            if len(self.duplicate_sample) < _SAMPLE:
                self.duplicate_sample.append(record.id)
            return
        else:
            first_id, first_phase = self._answers[before >> _FP_BITS]
            if first_phase == self.phase:
                raise DuplicateConflictError(
                    f"{self.kind}: id {record.id!r:.80} came twice with different contents "
                    f"(request ids {first_id or 'unknown'} and {request_id or 'unknown'}); "
                    "neither copy was recorded", request_id=request_id)
            # A later phase's copy: a change between walks (see the crawler's docstring).
            seen[record.id] = mark
            self.superseded += 1
            if len(self.superseded_sample) < _SAMPLE:
                self.superseded_sample.append(record.id)
        self._batch.append(record)
        if len(self._batch) >= self._batch_size:
            self.flush()

    def superseded_note(self) -> str | None:
        """The note a crawl stores when a later walk's copies replaced earlier ones."""
        if not self.superseded:
            return None
        return (f"{self.kind}: {self.superseded} changed between the region walks and the "
                "unfiltered walk; the unfiltered walk's (later) copies kept")

    def flush(self) -> None:
        """Hand the pending batch to the sink."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._emit(batch)
