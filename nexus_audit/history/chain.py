"""The evidence chain: one manifest per committed crawl, each holding the previous one's hash.

The encoding is a contract (README, "Evidence you can verify"); an auditor recomputes every
value here from the stored history with standard tools, and :mod:`nexus_audit.history.verify`
does exactly that.

**Canonical JSON**: ``json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8 (:func:`canonical`).

**A manifest** is a canonical JSON object; its hash is the SHA-256 (hex) of that text:

* ``chain``: 1 (the encoding's version); ``seq``: its place in the chain (0 is a genesis);
  ``prev``: the previous manifest's hash (null for the first) and ``prev_crawl`` its
  crawl (null for the first or a genesis), so a removed crawl can be named;
* ``crawl``: the crawl's row as committed (:func:`crawl_row`: times ISO 8601 UTC with
  microseconds, ``requests_by_endpoint`` as the stored JSON text);
* ``state`` (successful crawls only): per version view of each kind the crawl covered,
  ``{"rows": n, "sum": hex}`` over every row of the account current as of the crawl
  (``first_crawl <= crawl_id`` and ``until_crawl`` null or greater);
* ``corrections`` (when the crawl re-dated earlier crawls after a clock stepped back): the
  rows as they were before, as recorded in ``clock_skews``;
* a genesis (``seq`` 0, only in a database that held history before the chain began) has
  ``genesis``: ``{"through_crawl": N, <table>: {"rows": n, "sha256": hex}}`` over the
  crawls and the log tables' rows up to crawl N (sorted canonical lines, see
  :func:`table_digest`).

**The state sum** of a view's rows: each row is the canonical JSON array ``[account, id,
<the view's other columns in order>]`` (cpu and sizes as integers, memory as a float);
its element is ``SHA-256(line)``, expanded to 2048 bits with SHAKE-256
(``shake_256(element).digest(256)`` read as a big-endian integer); the sum of the expanded
elements modulo 2**2048, written as 256 big-endian bytes, is hashed with SHA-256 for
``sum``. A sum, not a hash of sorted lines, so a commit updates it from the rows it
changes (subtract the old element, add the new) instead of re-reading the whole fleet; at
2048 bits, Wagner's generalised-birthday attack on additive hashes needs far more work
than any table we could hold makes feasible (it is the reason for 2048 and not 256).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any, Final

from nexus_audit.domain.model import Kind
from nexus_audit.history.schema import BUCKET_VERSION_COLUMNS, INSTANCE_COLUMNS

#: The encoding's version (a manifest's ``chain`` key).
CHAIN_VERSION: Final = 1
#: Per version view, its record columns in the order a row's line lists them (after the
#: account): the view's own column order.
VIEW_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    "instance_versions": tuple(INSTANCE_COLUMNS),
    "bucket_versions": tuple(BUCKET_VERSION_COLUMNS),
    "bucket_sizes": ("id", "size_bytes"),
}
#: Per kind, the version views whose state a successful crawl of it vouches for.
KIND_VIEWS: Final[Mapping[Kind, tuple[str, ...]]] = {
    "instances": ("instance_versions",), "buckets": ("bucket_versions", "bucket_sizes")}
#: The crawl columns a manifest carries, in order.
CRAWL_COLUMNS: Final = (
    "crawl_id", "account", "kinds", "started_at", "finished_at", "status", "instances",
    "buckets", "requests", "retries", "total_mismatch", "error", "error_code", "request_id",
    "requests_by_endpoint")
#: The log tables a genesis vouches for, and the columns of their lines.
LOG_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    "instance_log": ("account", *INSTANCE_COLUMNS, "first_crawl", "removed"),
    "bucket_log": ("account", *BUCKET_VERSION_COLUMNS, "first_crawl", "removed"),
    "bucket_size_log": ("account", "id", "size_bytes", "first_crawl", "removed"),
}
_INTEGER: Final = frozenset({"cpu", "size_bytes", "first_crawl"})
_FLOAT: Final = frozenset({"memory_gb"})
_MODULUS: Final = 1 << 2048
_EXPANDED_BYTES: Final = 256


#: ``json.dumps`` with the canonical arguments builds this encoder on every call; built
#: once, its ``encode`` gives the same text (a few microseconds less per manifest).
_CANONICAL: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False, allow_nan=False)


def canonical(value: Any) -> str:
    """The canonical JSON text of ``value`` (sorted keys, no spaces, UTF-8 as is)."""
    return _CANONICAL.encode(value)


def canonical_array(values: Sequence[Any]) -> str:
    """``canonical(list(values))`` for an array of scalars, the shape of every row's line.

    Written out for the types a row holds, the way :mod:`json`'s encoder writes them
    (``encode_basestring`` for text, ``int.__repr__`` and a finite float's
    ``float.__repr__``); anything else (a NaN, a subclass) goes through :func:`canonical`,
    so the text is the same either way: a commit hashes every row it changes, and a
    process's first commit every current row.
    """
    parts: list[str] = []
    for value in values:
        kind = type(value)
        if kind is str:
            parts.append(encode_basestring(value))
        elif value is None:
            parts.append("null")
        elif kind is int:
            parts.append(int.__repr__(value))
        elif kind is float and math.isfinite(value):
            parts.append(float.__repr__(value))
        elif kind is bool:
            parts.append("true" if value else "false")
        else:
            return canonical(list(values))
    return "[" + ",".join(parts) + "]"


def sha256_hex(text: str) -> str:
    """SHA-256 of ``text``'s UTF-8 bytes, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def column_converter(column: str) -> Callable[[Any], Any] | None:
    """The type a column's non-null value is stored as (None: as it is)."""
    if column in _INTEGER:
        return int
    if column in _FLOAT:
        return float
    if column == "removed":
        return bool
    return None


def _typed(column: str, value: Any) -> Any:
    """A column's value as the database stores it (the line must not depend on whether
    the value came from the API's JSON or from DuckDB)."""
    convert = column_converter(column)
    return value if value is None or convert is None else convert(value)


#: Per version view, :func:`column_converter` of each of its columns.
_VIEW_CONVERTERS: Final = {view: tuple(map(column_converter, columns))
                           for view, columns in VIEW_COLUMNS.items()}


def row_line(account: str, view: str, values: Sequence[Any]) -> str:
    """The canonical line of one row of ``view`` (``values``: its columns, id first)."""
    # _typed and canonical_array in one pass (a commit writes a line per row it changes):
    # the same text, any value of another type sending the whole row the long way.
    if type(account) is not str:
        return _row_line(account, view, values)
    parts = [encode_basestring(account)]
    for convert, value in zip(_VIEW_CONVERTERS[view], values, strict=True):
        if value is None:
            parts.append("null")
            continue
        if convert is not None:
            value = convert(value)
        kind = type(value)
        if kind is str:
            parts.append(encode_basestring(value))
        elif kind is int:
            parts.append(int.__repr__(value))
        elif kind is float and math.isfinite(value):
            parts.append(float.__repr__(value))
        else:
            return _row_line(account, view, values)
    return "[" + ",".join(parts) + "]"


def _row_line(account: str, view: str, values: Sequence[Any]) -> str:
    """:func:`row_line` the long way: each column typed, then :func:`canonical_array`."""
    line: list[Any] = [account]
    # _typed, column by column, with each column's conversion looked up once per view.
    for convert, value in zip(_VIEW_CONVERTERS[view], values, strict=True):
        line.append(value if convert is None or value is None else convert(value))
    return canonical_array(line)


def element(account: str, view: str, values: Sequence[Any]) -> bytes:
    """The element of one row: SHA-256 of its line (32 bytes)."""
    return hashlib.sha256(row_line(account, view, values).encode("utf-8")).digest()


def expand(digest: bytes) -> int:
    """An element expanded to 2048 bits (SHAKE-256), the value the state sum adds."""
    return int.from_bytes(hashlib.shake_256(digest).digest(_EXPANDED_BYTES), "big")


@dataclass(slots=True)
class StateSum:
    """A multiset of row elements as a sum modulo 2**2048, and its size."""

    rows: int = 0
    total: int = 0

    def add(self, digest: bytes) -> None:
        """Add one element."""
        self.rows += 1
        self.total = (self.total + expand(digest)) % _MODULUS

    def add_all(self, digests: Sequence[bytes]) -> None:
        """Add several elements (one reduction modulo 2**2048 for all of them)."""
        self.rows += len(digests)
        self.total = (self.total + sum(map(expand, digests))) % _MODULUS

    def remove(self, digest: bytes) -> None:
        """Remove one element (present before)."""
        self.rows -= 1
        self.total = (self.total - expand(digest)) % _MODULUS

    def moved(self, added: Sequence[bytes], taken: Sequence[bytes]) -> StateSum:
        """A new sum: this one with ``added`` added and ``taken`` (present) removed, in one
        reduction modulo 2**2048 (a commit's changes)."""
        return StateSum(self.rows + len(added) - len(taken),
                        (self.total + sum(map(expand, added)) - sum(map(expand, taken)))
                        % _MODULUS)

    def copy(self) -> StateSum:
        """An independent copy."""
        return StateSum(self.rows, self.total)

    def as_json(self) -> dict[str, Any]:
        """``{"rows": n, "sum": hex}`` as a manifest holds it."""
        return {"rows": self.rows, "sum": hashlib.sha256(
            self.total.to_bytes(_EXPANDED_BYTES, "big")).hexdigest()}


def iso(moment: datetime) -> str:
    """A time as a manifest writes it: UTC, microseconds, ``Z``."""
    utc = moment.astimezone(UTC)
    if utc.year >= 1000:
        # The same text as the strftime below, at half the cost: isoformat always pads the
        # year to four digits, where strftime's %Y may not (years before 1000).
        return utc.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def crawl_row(values: Mapping[str, Any]) -> dict[str, Any]:
    """The crawl row a manifest carries, from the stored columns (:data:`CRAWL_COLUMNS`)."""
    row: dict[str, Any] = {}
    for column in CRAWL_COLUMNS:
        value = values[column]
        if isinstance(value, datetime):
            value = iso(value)
        elif column == "kinds":
            value = list(value)
        elif column in ("crawl_id", "instances", "buckets", "requests", "retries"):
            value = int(value)
        row[column] = value
    return row


#: A clock correction as a manifest lists it (``clock_skews``' columns).
SKEW_COLUMNS: Final = ("crawl_id", "recorded_started_at", "recorded_finished_at",
                       "corrected_to")


def correction(values: Mapping[str, Any]) -> dict[str, Any]:
    """One clock correction as a manifest lists it (times as :func:`iso` writes them)."""
    return {k: iso(v) if isinstance(v, datetime) else int(v) for k, v in values.items()
            if k in SKEW_COLUMNS}


def manifest(*, seq: int, prev: str | None, prev_crawl: int | None, crawl: Mapping[str, Any],
             state: Mapping[str, StateSum] | None,
             corrections: Sequence[Mapping[str, Any]] = ()) -> str:
    """The canonical text of one crawl's manifest."""
    body: dict[str, Any] = {"chain": CHAIN_VERSION, "seq": seq, "prev": prev,
                            "prev_crawl": prev_crawl, "crawl": dict(crawl)}
    if state is not None:
        body["state"] = {view: total.as_json() for view, total in state.items()}
    if corrections:
        body["corrections"] = [dict(c) for c in corrections]
    return canonical(body)


def table_digest(lines: Iterable[str]) -> dict[str, Any]:
    """``{"rows": n, "sha256": hex}`` over ``lines`` sorted, each followed by a newline:
    ``sort | sha256sum`` of a file of the lines (``LC_ALL=C``, bytewise)."""
    ordered = sorted(line.encode("utf-8") for line in lines)
    digest = hashlib.sha256()
    for line in ordered:
        digest.update(line + b"\n")
    return {"rows": len(ordered), "sha256": digest.hexdigest()}


def log_line(table: str, values: Sequence[Any]) -> str:
    """The canonical line of one log row for a genesis (:data:`LOG_COLUMNS`)."""
    return canonical_array([_typed(c, v)
                            for c, v in zip(LOG_COLUMNS[table], values, strict=True)])


def genesis(*, through_crawl: int, crawls: Iterable[Mapping[str, Any]],
            logs: Mapping[str, Iterable[Sequence[Any]]]) -> str:
    """The canonical text of a genesis manifest over the history a database held."""
    body: dict[str, Any] = {"through_crawl": through_crawl,
                            "crawls": table_digest(canonical(crawl_row(c)) for c in crawls)}
    for table, rows in logs.items():
        body[table] = table_digest(log_line(table, row) for row in rows)
    return canonical({"chain": CHAIN_VERSION, "seq": 0, "prev": None, "genesis": body})


@dataclass(slots=True)
class ViewState:
    """What a Store remembers of one account's view after its last commit: the element of
    each current row (by id; None for a view too large to remember) and their sum, so the
    next commit updates rather than rereads.
    """

    crawl_id: int
    elements: dict[str, bytes] | None
    total: StateSum
