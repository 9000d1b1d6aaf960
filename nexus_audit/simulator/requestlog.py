"""The log of API requests the simulator received, for tests to assert on."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request: when, what, the status sent (None if the connection was reset)."""

    time: float
    method: str
    path: str
    query: str
    status: int | None
    key_id: str | None
    request_id: str

    def to_json(self) -> dict[str, object]:
        """The record as JSON (``GET /_sim/requests``)."""
        return asdict(self)


class RequestLog:
    """An append-only, thread-safe list of RequestRecord."""

    def __init__(self) -> None:
        self._records: list[RequestRecord] = []
        self._lock = threading.Lock()

    def append(self, record: RequestRecord) -> None:
        """Add one record."""
        with self._lock:
            self._records.append(record)

    def records(self, *, path: str | None = None, method: str | None = None) -> list[RequestRecord]:
        """A copy of the records, optionally only those with this path and/or method."""
        with self._lock:
            out = list(self._records)
        return [
            r
            for r in out
            if (path is None or r.path == path) and (method is None or r.method == method)
        ]

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
