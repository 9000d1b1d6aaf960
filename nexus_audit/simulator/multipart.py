"""Multipart uploads of objects, in the S3 style (the protocol is in README.md).

The reference only says "Supports multipart uploads for files > 100MB"; our reading:

* ``POST /v2/objects/{bucket}/{key}?uploads`` starts an upload (metadata and content type
  are given here, once) and answers ``{"bucket", "key", "upload_id"}``;
* ``PUT /v2/objects/{bucket}/{key}?upload_id=U&part=N`` stores part ``N`` (1..10000);
  sending a part again replaces it, so a retried part is harmless; each answer carries
  the part's ``etag`` (md5) and ``content_hash`` (sha256);
* ``POST /v2/objects/{bucket}/{key}?upload_id=U&complete`` with ``{"parts": [{"part": N,
  "etag": E}, ...]}`` in ascending order joins the listed parts into the object; every
  part but the last must hold at least ``min_part_bytes``. The object's ``etag`` and
  ``content_hash`` are those of the whole body, as for a single PUT. Completing again
  with the same list answers the same object (a retried completion is harmless);
* ``DELETE /v2/objects/{bucket}/{key}?upload_id=U`` aborts and drops the parts.

This module holds the state and the rules; app.py only parses HTTP and renders answers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import threading
from dataclasses import dataclass, field

from .config import DEFAULT_MIN_PART_BYTES
from .errors import ErrorCode, SimError, validation_error
from .objects import ObjectStore, StoredObject

MAX_PARTS = 10_000


@dataclass(frozen=True, slots=True)
class Part:
    """One uploaded part."""

    number: int
    data: bytes
    etag: str  # md5 hex, unquoted
    content_hash: str  # "sha256:<hex>"


@dataclass(slots=True)
class Upload:
    """An upload in progress: where it goes, its metadata, and the parts so far."""

    upload_id: str
    bucket: str
    key: str
    metadata: dict[str, object] | None
    content_type: str
    started_at: float
    parts: dict[int, Part] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Completion:
    """What completing an upload produced."""

    obj: StoredObject
    #: Size of the object the completion replaced (0 if none).
    replaced: int
    parts: int
    #: True when this answers a repeated completion (nothing was stored again).
    repeat: bool


def _digests(data: bytes) -> tuple[str, str]:
    # md5 is what ETags are made of; it is not used for security here.
    return (hashlib.md5(data, usedforsecurity=False).hexdigest(),
            "sha256:" + hashlib.sha256(data).hexdigest())


def _not_found(upload_id: str) -> SimError:
    return SimError(404, ErrorCode.UPLOAD_NOT_FOUND,
                    f"Upload {upload_id} does not exist (never started, aborted or completed)")


def parse_part_number(text: str | None) -> int:
    """The ``part`` query parameter: an integer in 1..10000."""
    if text is None or not text.strip().isdigit():
        raise validation_error(f"Query parameter 'part' must be an integer in 1..{MAX_PARTS}")
    number = int(text)
    if not 1 <= number <= MAX_PARTS:
        raise validation_error(f"Query parameter 'part' must be an integer in 1..{MAX_PARTS}")
    return number


def parse_part_list(body: bytes) -> list[tuple[int, str]]:
    """The completion body ``{"parts": [{"part": N, "etag": E}, ...]}`` as (N, E) pairs."""
    try:
        value = json.loads(body) if body else None
    except ValueError:
        raise SimError(400, ErrorCode.INVALID_JSON, "Request body is not valid JSON") from None
    parts = value.get("parts") if isinstance(value, dict) else None
    if not isinstance(parts, list) or not parts:
        raise validation_error("Body must be {\"parts\": [{\"part\": N, \"etag\": E}, ...]} "
                               "with at least one part")
    out: list[tuple[int, str]] = []
    for item in parts:
        number = item.get("part") if isinstance(item, dict) else None
        etag = item.get("etag") if isinstance(item, dict) else None
        if (not isinstance(number, int) or isinstance(number, bool)
                or not 1 <= number <= MAX_PARTS or not isinstance(etag, str) or not etag):
            raise validation_error(
                f"Each part must be {{\"part\": 1..{MAX_PARTS}, \"etag\": \"<md5>\"}}")
        out.append((number, etag.strip('"')))
    return out


class MultipartUploads:
    """Uploads in progress by id, and the answers of completed ones (for retries)."""

    def __init__(self, *, min_part_bytes: int = DEFAULT_MIN_PART_BYTES) -> None:
        self.min_part_bytes = min_part_bytes
        self._uploads: dict[str, Upload] = {}
        self._completed: dict[str, tuple[tuple[tuple[int, str], ...], StoredObject, int]] = {}
        self._lock = threading.Lock()

    def start(self, bucket: str, key: str, *, metadata: dict[str, object] | None,
              content_type: str, now: float) -> Upload:
        """Begin an upload to ``bucket/key``."""
        upload = Upload(upload_id="up_" + secrets.token_hex(12), bucket=bucket, key=key,
                        metadata=metadata, content_type=content_type, started_at=now)
        with self._lock:
            self._uploads[upload.upload_id] = upload
        return upload

    def _get(self, upload_id: str, bucket: str, key: str) -> Upload:
        upload = self._uploads.get(upload_id)
        # An id used with another object is as unknown as an id never issued.
        if upload is None or (upload.bucket, upload.key) != (bucket, key):
            raise _not_found(upload_id)
        return upload

    def put_part(self, upload_id: str, bucket: str, key: str, number: int, data: bytes) -> Part:
        """Store (or replace) part ``number`` of an upload."""
        etag, content_hash = _digests(data)
        part = Part(number=number, data=data, etag=etag, content_hash=content_hash)
        with self._lock:
            self._get(upload_id, bucket, key).parts[number] = part
        return part

    def complete(self, upload_id: str, bucket: str, key: str, listed: list[tuple[int, str]],
                 *, objects: ObjectStore, now: float) -> Completion:
        """Join the listed parts into the object; the rules are in the module docstring."""
        signature = tuple(listed)
        with self._lock:
            done = self._completed.get(upload_id)
            if done is not None and upload_id not in self._uploads:
                same, obj, count = done
                if same == signature and (obj.bucket, obj.key) == (bucket, key):
                    return Completion(obj=obj, replaced=0, parts=count, repeat=True)
            upload = self._get(upload_id, bucket, key)
            numbers = [n for n, _ in listed]
            if any(b <= a for a, b in itertools.pairwise(numbers)):
                raise SimError(400, ErrorCode.INVALID_PART_ORDER,
                               "Parts must be listed once each, in ascending order")
            chosen: list[Part] = []
            for number, etag in listed:
                part = upload.parts.get(number)
                if part is None:
                    raise SimError(400, ErrorCode.INVALID_PART,
                                   f"Part {number} of upload {upload_id} was not uploaded")
                if part.etag != etag:
                    raise SimError(400, ErrorCode.INVALID_PART,
                                   f"Part {number}: etag {etag} does not match the uploaded "
                                   f"part ({part.etag})")
                chosen.append(part)
            for part in chosen[:-1]:
                if len(part.data) < self.min_part_bytes:
                    raise SimError(400, ErrorCode.PART_TOO_SMALL,
                                   f"Part {part.number} holds {len(part.data)} bytes; every "
                                   f"part but the last needs at least {self.min_part_bytes}")
            del self._uploads[upload_id]
        data = b"".join(p.data for p in chosen)
        obj, replaced = objects.put(bucket, key, data, metadata=upload.metadata,
                                    content_type=upload.content_type, now=now)
        with self._lock:
            self._completed[upload_id] = (signature, obj, len(chosen))
        return Completion(obj=obj, replaced=replaced, parts=len(chosen), repeat=False)

    def abort(self, upload_id: str, bucket: str, key: str) -> None:
        """Drop an upload and its parts."""
        with self._lock:
            self._get(upload_id, bucket, key)
            del self._uploads[upload_id]

    def get(self, upload_id: str) -> Upload | None:
        """An upload in progress, or None (for tests)."""
        with self._lock:
            return self._uploads.get(upload_id)

    def in_progress(self) -> list[Upload]:
        """Every upload neither completed nor aborted, oldest first."""
        with self._lock:
            return sorted(self._uploads.values(), key=lambda u: u.started_at)
