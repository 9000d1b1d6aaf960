"""Opaque, signed pagination cursors and keyset paging over id-sorted lists.

A cursor is base64url(JSON) holding the last id returned, a hash of the filter set
and the issue time, signed with HMAC-SHA256 under a per-simulator secret. Resuming
means "ids greater than the last one", so a resource that exists for the whole walk
is returned exactly once however the fleet changes between pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Clocks of client and server may disagree a little; a cursor "from the future"
# beyond this is treated as forged.
_FUTURE_SKEW = 60.0


class InvalidCursorError(ValueError):
    """The cursor is garbled, forged, stale or was issued for other filters."""


def filter_hash(kind: str, filters: Mapping[str, str | None]) -> str:
    """A short stable digest of a resource kind and its filter set."""
    canonical = json.dumps(
        {"kind": kind, "filters": {k: v for k, v in sorted(filters.items()) if v is not None}},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class CursorCodec:
    """Encodes and verifies cursors under one secret with one maximum age."""

    def __init__(self, secret: bytes, *, max_age: float = 3600.0) -> None:
        if not secret:
            raise ValueError("cursor secret must not be empty")
        self._secret = secret
        self.max_age = max_age

    def encode(self, last_id: str, fhash: str, issued_at: float) -> str:
        """Return the cursor that resumes after ``last_id`` for filters ``fhash``."""
        body = {"last": last_id, "f": fhash, "iat": int(issued_at)}
        payload = dict(body, sig=self._sign(body))
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, token: str, fhash: str, now: float) -> str:
        """Verify ``token`` and return its last id; raise InvalidCursorError if unusable."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            payload = json.loads(raw)
        except (binascii.Error, ValueError) as exc:  # ValueError covers bad JSON/UTF-8
            raise InvalidCursorError("cursor is not valid") from exc
        if not isinstance(payload, dict) or set(payload) != {"last", "f", "iat", "sig"}:
            raise InvalidCursorError("cursor is not valid")
        last, f, iat, sig = payload["last"], payload["f"], payload["iat"], payload["sig"]
        if not (
            isinstance(last, str)
            and isinstance(f, str)
            and isinstance(iat, int)
            and not isinstance(iat, bool)
            and isinstance(sig, str)
        ):
            raise InvalidCursorError("cursor is not valid")
        expected = self._sign({"last": last, "f": f, "iat": iat})
        if not hmac.compare_digest(sig, expected):
            raise InvalidCursorError("cursor signature does not match")
        if f != fhash:
            raise InvalidCursorError("cursor was issued for different filters")
        if iat > now + _FUTURE_SKEW:
            raise InvalidCursorError("cursor is not valid")
        if now - iat > self.max_age:
            raise InvalidCursorError("cursor has expired")
        return last

    def _sign(self, body: Mapping[str, object]) -> str:
        msg = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page: its items, the cursor for the next page (None on the last), the total."""

    items: list[T]
    next_cursor: str | None
    total: int


def paginate(
    items: Sequence[T],
    *,
    key: Callable[[T], str],
    after: str | None,
    limit: int,
) -> tuple[list[T], bool]:
    """Keyset paging: up to ``limit`` items with key > ``after``; and whether more follow.

    ``items`` must be sorted by ``key``.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    start = 0
    if after is not None:
        # Binary search: first item whose key is strictly greater than ``after``.
        lo, hi = 0, len(items)
        while lo < hi:
            mid = (lo + hi) // 2
            if key(items[mid]) <= after:
                lo = mid + 1
            else:
                hi = mid
        start = lo
    chunk = list(items[start : start + limit])
    return chunk, start + limit < len(items)


#: Cuts one page from a sorted collection: ``(after, limit) -> (items, more, total)``.
Pager = Callable[[str | None, int], tuple[list[T], bool, int]]


def make_page(
    items: Sequence[T],
    *,
    key: Callable[[T], str],
    codec: CursorCodec,
    fhash: str,
    cursor: str | None,
    limit: int,
    now: float,
) -> Page[T]:
    """Verify ``cursor`` (if any), cut one page of ``items`` and sign the next cursor."""

    def pager(after: str | None, size: int) -> tuple[list[T], bool, int]:
        chunk, more = paginate(items, key=key, after=after, limit=size)
        return chunk, more, len(items)

    return make_page_with(pager, key=key, codec=codec, fhash=fhash, cursor=cursor,
                          limit=limit, now=now)


def make_page_with(
    pager: Pager[T],
    *,
    key: Callable[[T], str],
    codec: CursorCodec,
    fhash: str,
    cursor: str | None,
    limit: int,
    now: float,
) -> Page[T]:
    """Like :func:`make_page`, with the page cut by ``pager`` (an index's keyset slice)."""
    after = codec.decode(cursor, fhash, now) if cursor else None
    chunk, more, total = pager(after, limit)
    next_cursor = codec.encode(key(chunk[-1]), fhash, now) if more and chunk else None
    return Page(items=chunk, next_cursor=next_cursor, total=total)
