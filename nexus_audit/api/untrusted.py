"""Reading API answers that may contradict themselves or echo the key back."""

from __future__ import annotations

import json
from typing import Any, NamedTuple, TypeVar

R = TypeVar("R", bound=NamedTuple)


class RepeatedKeyError(ValueError):
    """A JSON object named one key twice with different values."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _one_value_per_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object hook: a key repeated with another value is a contradiction
    (``"access": "public-read"`` then ``"private"``) that Python would settle silently by
    keeping the last; other parsers keep the first. Identical repeats are harmless."""
    out: dict[str, Any] = dict(pairs)
    if len(out) == len(pairs):  # no key repeated (the usual object): nothing to compare
        return out
    out = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise RepeatedKeyError(key)
        out[key] = value
    return out


def loads(body: bytes) -> Any:
    """``json.loads`` refusing an object that names a key twice with different values
    (:class:`RepeatedKeyError`)."""
    return json.loads(body, object_pairs_hook=_one_value_per_key)


def redact_fields(record: R, secret: str) -> R:
    """``record`` with ``secret`` replaced by ``[REDACTED]`` in every text field holding it
    (an API echoing the key inside a record must not get it into the history)."""
    if not secret:
        return record
    leaked: dict[str, Any] = {
        name: value.replace(secret, "[REDACTED]")
        for name, value in zip(record._fields, record, strict=True)
        if isinstance(value, str) and secret in value}
    return record._replace(**leaked) if leaked else record


def redact_page(records: list[R], secret: str) -> list[R]:
    """:func:`redact_fields` of each of ``records`` (a page), with one test for the page.

    When one of the page's text fields holds ``secret``, so do all of them joined (by NUL,
    so that a key spans two fields only if it holds a NUL): a page whose joined text does
    not hold it (every page of an honest API) is returned as it is; the others are
    redacted record by record.
    """
    if not secret or not records:
        return records
    text = "\x00".join([value for record in records for value in record
                        if isinstance(value, str)])
    if secret not in text:
        return records
    return [redact_fields(record, secret) for record in records]
