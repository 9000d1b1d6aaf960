"""The records a crawl produces and the crawl's summary: plain values shared by every layer.

``Instance`` and ``Bucket`` are named tuples on purpose: their field order is the column
order of the store's staging tables, so a batch goes to DuckDB's Appender as it is,
without a conversion per row (the store ingests millions of observations).

``instance_from_api`` and ``bucket_from_api`` validate one API item and keep the fields we
do not know in ``extra``: CloudNexus may add fields, and history must not lose them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, NamedTuple

Kind = Literal["instances", "buckets"]
KINDS: Final[tuple[Kind, ...]] = ("instances", "buckets")
INSTANCE_STATUSES: Final = ("running", "stopped", "pending")


class InvalidRecordError(ValueError):
    """An API item that cannot be recorded faithfully (no id, a field of the wrong type)."""

    #: The request id of the answer the item came in, to quote to CloudNexus support (set
    #: by the crawler, which knows the answer; validation here sees only the item).
    request_id: str | None = None


class Instance(NamedTuple):
    """One compute instance as one crawl saw it."""

    id: str
    name: str
    status: str
    region: str
    cpu: int
    memory_gb: float
    plan: str | None
    tags: str  # canonical JSON object (sorted keys), "{}" when none
    created_at: str | None
    extra: str  # canonical JSON object of fields this version does not model


class Bucket(NamedTuple):
    """One storage bucket as one crawl saw it."""

    id: str
    region: str
    size_bytes: int
    access: str
    created_at: str | None
    tags: str  # canonical JSON object (sorted keys), "{}" when none
    extra: str  # canonical JSON object of fields this version does not model


#: ``json.dumps`` with options builds an encoder per call; these, built once, write the
#: same text (two per record: a crawl of a million instances spent 1.6 s building them).
_CANONICAL: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_CANONICAL_FINITE: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"),
                                            ensure_ascii=False, allow_nan=False)


def canonical_json(value: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no spaces, so equal mappings give equal text."""
    return _CANONICAL.encode(value)


_INSTANCE_FIELDS: Final = frozenset(Instance._fields)
_BUCKET_FIELDS: Final = frozenset(Bucket._fields)
#: The longest id or modelled text field recorded. The reference sets no limit; ids and
#: names are tens of characters, and these values become Prometheus labels and history
#: rows: a megabyte "id" is an API fault, not a resource (INVALID_RECORD).
MAX_TEXT: Final = 1024


def _utf8(value: str, key: str, ident: str) -> str:
    """``value`` if it is Unicode text; JSON's ``\\ud800`` escapes give Python strings
    holding lone surrogates, which are no text: UTF-8 (DuckDB's strings, Parquet, every
    output) cannot hold them, so such an item is invalid, not a store failure."""
    if not value.isascii():  # isascii is O(1); the common case ends here
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRecordError(
                f"{ident:.120}: field {key!r} holds {value[exc.start]!r}, a lone surrogate "
                "(not Unicode text)") from None
    return value


def _text(value: str, key: str, ident: str) -> str:
    if len(value) > MAX_TEXT:
        raise InvalidRecordError(f"{ident:.120}: field {key!r} is {len(value):,} characters "
                                 f"long, more than the {MAX_TEXT:,} recorded")
    return _utf8(value, key, ident)


def _req_str(item: Mapping[str, Any], key: str, ident: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRecordError(
            f"{ident:.120}: field {key!r} must be a non-empty string, got {value!r:.80}"
        )
    return _text(value, key, ident)


def _opt_str(item: Mapping[str, Any], key: str, ident: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRecordError(f"{ident:.120}: field {key!r} must be a string, got {value!r:.80}")
    return None if value is None else _text(value, key, ident)


#: The largest value of each integral column: ``cpu`` is an INTEGER, ``size_bytes`` a
#: BIGINT in the store; a larger count is no count CloudNexus could mean.
INT32_MAX: Final = 2**31 - 1
INT64_MAX: Final = 2**63 - 1
#: The largest ``memory_gb`` recorded (two exabytes, as ``cpu``'s bound). A DOUBLE holds
#: 1e300, but priced per GB-hour it is no amount a report can add up (money is summed as
#: DECIMAL(38,12)): one such record made every report fail on a conversion error.
MAX_MEMORY_GB: Final = INT32_MAX


def _number(item: Mapping[str, Any], key: str, ident: str, *, integral: bool,
            maximum: int | None = None) -> int | float:
    value = item.get(key)
    # bool is an int in Python but never a count in JSON. Python's json reads NaN and
    # Infinity, which compare false with everything: ``NaN < 0`` would let one through.
    # Only a float can be non-finite: an integer of hundreds of digits (JSON has no bound)
    # is compared as it is, not made a float (isfinite raised OverflowError on it).
    ok = isinstance(value, int) if integral else isinstance(value, (int, float))
    if (not ok or isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value)) or value < 0
            or (maximum is not None and value > maximum)):
        kind = "a non-negative integer" if integral else "a finite non-negative number"
        if maximum is not None:
            kind += f" up to {maximum}"
        raise InvalidRecordError(f"{ident:.120}: field {key!r} must be {kind}, got {value!r:.40}")
    return value


def _extra(extra: Mapping[str, Any], ident: str) -> str:
    """The fields we do not model as canonical JSON; a non-finite number is invalid JSON."""
    try:
        text = _CANONICAL_FINITE.encode(extra)
    except ValueError:
        raise InvalidRecordError(
            f"{ident:.120}: a field holds a non-finite number (NaN or Infinity)") from None
    return _utf8(text, "extra", ident)


def _tags(item: Mapping[str, Any], ident: str) -> str:
    tags = item.get("tags")
    if tags is None:
        return "{}"
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise InvalidRecordError(f"{ident:.120}: field 'tags' must map strings to strings")
    return _utf8(canonical_json(tags), "tags", ident)


def _ident(item: object, kind: str) -> tuple[Mapping[str, Any], str]:
    if not isinstance(item, dict):
        raise InvalidRecordError(f"{kind} item is not a JSON object: {item!r:.80}")
    ident = item.get("id")
    if not isinstance(ident, str) or not ident:
        raise InvalidRecordError(f"{kind} item without a valid 'id': {canonical_json(item):.120}")
    return item, _text(ident, "id", ident)


#: The types of an unmodelled field's value that the inline path encodes: scalars, so the
#: encoder needs no guard against a value that contains itself.
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _compiled(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode`` for a dict of scalars, with the C encoder built once instead of
    per call (as ``encode`` does: half its cost for a record's tags). The same text:
    ``encode`` builds the same C encoder with the same settings, and only its guard
    against self-containing values (``markers``) is left out, which values from JSON, or
    scalars, cannot need."""
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:  # no C accelerator (another interpreter): the encoder as it is
        return encoder.encode
    built = make(None, encoder.default, json.encoder.encode_basestring, None,
                 encoder.key_separator, encoder.item_separator, encoder.sort_keys,
                 encoder.skipkeys, encoder.allow_nan)
    join = "".join
    return lambda value: join(built(value, 0))


_ENCODE: Final = _compiled(_CANONICAL)
_ENCODE_FINITE: Final = _compiled(_CANONICAL_FINITE)


def _flat_tags(tags: object) -> str | None:
    """:func:`_tags`' text for None or a dict of strings to strings; None for anything
    else (then the field-by-field path decides)."""
    if tags is None:
        return "{}"
    if type(tags) is not dict:
        return None
    for key, value in tags.items():
        if type(key) is not str or type(value) is not str:
            return None
    return _ENCODE(tags)


def _flat_extra(item: dict[str, Any], known: frozenset[str]) -> str | None:
    """:func:`_extra`'s text for the unmodelled fields of ``item`` when each holds a
    scalar, a float finite; None otherwise (then the field-by-field path decides)."""
    extra = {k: v for k, v in item.items() if k not in known}
    for value in extra.values():
        if type(value) not in _SCALARS:
            return None
    try:
        return _ENCODE_FINITE(extra)
    except ValueError:  # NaN or Infinity: invalid, said field by field
        return None


def _unicode(*texts: str | None) -> bool:
    """True when every text is Unicode text (see :func:`_utf8`); ASCII, the usual case,
    is told in O(1) per text. False sends the item the field-by-field way."""
    for text in texts:
        if text is not None and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def _checked_instance(item: object) -> Instance:
    """:func:`instance_from_api` field by field: the first fault named."""
    data, ident = _ident(item, "instance")
    extra = {k: v for k, v in data.items() if k not in _INSTANCE_FIELDS}
    return Instance(
        id=ident,
        name=_req_str(data, "name", ident),
        status=_req_str(data, "status", ident),
        region=_req_str(data, "region", ident),
        cpu=int(_number(data, "cpu", ident, integral=True, maximum=INT32_MAX)),
        memory_gb=float(_number(data, "memory_gb", ident, integral=False,
                                   maximum=MAX_MEMORY_GB)),
        plan=_opt_str(data, "plan", ident),
        tags=_tags(data, ident),
        created_at=_opt_str(data, "created_at", ident),
        extra=_extra(extra, ident),
    )


def _checked_bucket(item: object) -> Bucket:
    """:func:`bucket_from_api` field by field: the first fault named."""
    data, ident = _ident(item, "bucket")
    extra = {k: v for k, v in data.items() if k not in _BUCKET_FIELDS}
    return Bucket(
        id=ident,
        region=_req_str(data, "region", ident),
        size_bytes=int(_number(data, "size_bytes", ident, integral=True, maximum=INT64_MAX)),
        access=_req_str(data, "access", ident),
        created_at=_opt_str(data, "created_at", ident),
        tags=_tags(data, ident),
        extra=_extra(extra, ident),
    )


def instance_from_api(item: object) -> Instance:
    """Validate one ``GET /instances`` item; raise :class:`InvalidRecordError` if unusable."""
    # The usual item is checked inline (a crawl validates a million): exact types, each
    # bound the field-by-field checks apply, the same text for tags and extra. Anything
    # else, valid or not, goes the field-by-field way, which names the first fault.
    if type(item) is dict:
        get = item.get
        ident, name, status, region = get("id"), get("name"), get("status"), get("region")
        cpu, memory, plan, created = get("cpu"), get("memory_gb"), get("plan"), get("created_at")
        if (type(ident) is str and type(name) is str and type(status) is str
                and type(region) is str and 0 < len(ident) <= MAX_TEXT
                and 0 < len(name) <= MAX_TEXT and 0 < len(status) <= MAX_TEXT
                and 0 < len(region) <= MAX_TEXT
                and type(cpu) is int and 0 <= cpu <= INT32_MAX
                and ((type(memory) is float and 0 <= memory <= MAX_MEMORY_GB)
                     or (type(memory) is int and 0 <= memory <= MAX_MEMORY_GB))
                and (plan is None or (type(plan) is str and len(plan) <= MAX_TEXT))
                and (created is None
                     or (type(created) is str and len(created) <= MAX_TEXT))):
            tags = _flat_tags(get("tags"))
            extra = _flat_extra(item, _INSTANCE_FIELDS)
            if (tags is not None and extra is not None
                    and _unicode(ident, name, status, region, plan, created, tags, extra)):
                return Instance(ident, name, status, region, cpu, float(memory), plan, tags,
                                created, extra)
    return _checked_instance(item)


def bucket_from_api(item: object) -> Bucket:
    """Validate one ``GET /buckets`` item; raise :class:`InvalidRecordError` if unusable."""
    if type(item) is dict:  # the usual item inline, as in instance_from_api
        get = item.get
        ident, region, size, access = get("id"), get("region"), get("size_bytes"), get("access")
        created = get("created_at")
        if (type(ident) is str and type(region) is str and type(access) is str
                and 0 < len(ident) <= MAX_TEXT and 0 < len(region) <= MAX_TEXT
                and 0 < len(access) <= MAX_TEXT
                and type(size) is int and 0 <= size <= INT64_MAX
                and (created is None
                     or (type(created) is str and len(created) <= MAX_TEXT))):
            tags = _flat_tags(get("tags"))
            extra = _flat_extra(item, _BUCKET_FIELDS)
            if (tags is not None and extra is not None
                    and _unicode(ident, region, access, created, tags, extra)):
                return Bucket(ident, region, size, access, created, tags, extra)
    return _checked_bucket(item)


CrawlStatus = Literal["succeeded", "failed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CrawlSummary:
    """What one crawl of one account did; stored with the crawl, succeeded or failed."""

    account: str
    kinds: tuple[Kind, ...]
    started_at: datetime
    finished_at: datetime
    status: CrawlStatus
    instances: int = 0
    buckets: int = 0
    requests: int = 0
    retries: int = 0
    #: Human-readable note when collected counts differ from ``pagination.total``.
    total_mismatch: str | None = None
    #: One line for a failed crawl: what failed, with the API's code and request_id.
    error: str | None = None
    error_code: str | None = None
    request_id: str | None = None
    #: Requests per endpoint and HTTP status (``{"GET /instances": {"200": 12}}``).
    requests_by_endpoint: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Wall-clock length of the crawl."""
        return (self.finished_at - self.started_at).total_seconds()
