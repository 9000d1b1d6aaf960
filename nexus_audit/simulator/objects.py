"""Objects stored through ``PUT /v2/objects/{bucket}/{key}``, inspectable from tests."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One stored object and what the API reported for it."""

    bucket: str
    key: str
    data: bytes
    metadata: dict[str, object] | None
    content_type: str
    etag: str  # md5 hex, unquoted
    content_hash: str  # "sha256:<hex>"
    stored_at: float

    @property
    def size(self) -> int:
        """Length of the body in bytes."""
        return len(self.data)


class ObjectStore:
    """Objects by (bucket, key); a PUT to an existing key overwrites it."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], StoredObject] = {}
        self._lock = threading.Lock()

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        metadata: dict[str, object] | None,
        content_type: str,
        now: float,
    ) -> tuple[StoredObject, int]:
        """Store an object; return it and the size of the object it replaced (or 0)."""
        obj = StoredObject(
            bucket=bucket,
            key=key,
            data=data,
            metadata=metadata,
            content_type=content_type,
            # md5 is what ETags are made of; it is not used for security here.
            etag=hashlib.md5(data, usedforsecurity=False).hexdigest(),
            content_hash="sha256:" + hashlib.sha256(data).hexdigest(),
            stored_at=now,
        )
        with self._lock:
            old = self._objects.get((bucket, key))
            self._objects[(bucket, key)] = obj
        return obj, old.size if old else 0

    def get(self, bucket: str, key: str) -> StoredObject | None:
        """One object, or None."""
        with self._lock:
            return self._objects.get((bucket, key))

    def list(self, bucket: str | None = None) -> list[StoredObject]:
        """All objects (of one bucket), sorted by bucket and key."""
        with self._lock:
            objs = [o for (b, _), o in self._objects.items() if bucket is None or b == bucket]
        return sorted(objs, key=lambda o: (o.bucket, o.key))
