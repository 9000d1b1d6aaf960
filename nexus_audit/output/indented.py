"""Indented JSON, byte for byte what ``json.JSONEncoder(indent=2, ensure_ascii=False)``
writes, at a fraction of its cost on long lists of records.

The standard library encodes indented JSON in pure Python (its C encoder only writes
unindented JSON), about 50 MB a CPU-minute: the report of 30 days of a million
instances, 120 MB of drift rows and stale instances, took six seconds to write. Here
each value is encoded by the same C functions the encoder uses (``encode_basestring``,
``int`` and ``float`` ``__repr__``), and a list of flat records (dicts of the same keys)
is written column by column in batches (one C-level ``map`` per column, one C-level join
of the columns and the keys per batch) instead of value by value; everything else, and
any record holding a list or an object, goes the general way. A
:class:`~nexus_audit.audit.rows.Table` (the report's long lists, held as columns) is
written as the list of its records, from its columns. ``tests/test_indented.py``
compares both encoders on arbitrary values.
"""

from __future__ import annotations

import json.encoder
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain, islice, repeat
from typing import Any, Final

from nexus_audit.audit.rows import Table

#: The standard library's string encoder for ``ensure_ascii=False`` (its C version).
_string: Final = json.encoder.encode_basestring
_INDENT: Final = 2
#: Records written per batch: the columns of one batch are held at once, not the list's.
BATCH: Final = 2048
_INFINITY: Final = float("inf")


def _float(value: float) -> str:
    """A float as the encoder writes it (``allow_nan=True``)."""
    if value != value:  # NaN, the one value unequal to itself
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return float.__repr__(value)


def _key(key: object) -> str:
    """A dict key as the encoder writes it: a string, or a number, bool or null written
    as its JSON text in a string (``skipkeys=False``: other types raise)."""
    if isinstance(key, str):
        return _string(key)
    if key is None or isinstance(key, (int, float)):  # bool is an int
        return _string(encode(key))
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def encode(value: object, level: int = 0) -> str:
    """``value`` as indented JSON, its nested lines indented as at nesting ``level``."""
    if isinstance(value, str):
        return _string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return _float(value)
    return "".join(_container(value, level))


def _container(value: object, level: int) -> Iterator[str]:
    """The pieces of a list or dict at nesting ``level``."""
    inner = "\n" + " " * (_INDENT * (level + 1))
    outer = "\n" + " " * (_INDENT * level)
    if isinstance(value, Table):
        if not len(value):
            yield "[]"
            return
        yield "[" + inner
        yield from _table_rows(value.keys, value.columns, level + 1)
        yield outer + "]"
        return
    if isinstance(value, (list, tuple)):
        if not value:
            yield "[]"
            return
        yield "[" + inner
        if _records(value):
            yield from _record_rows(value, level + 1)
        else:
            yield ("," + inner).join(encode(item, level + 1) for item in value)
        yield outer + "]"
        return
    if isinstance(value, dict):
        if not value:
            yield "{}"
            return
        yield "{" + inner
        first = True
        for key, item in value.items():
            head = _key(key) + ": "
            yield head if first else "," + inner + head
            first = False
            if isinstance(item, (list, tuple, dict, Table)):  # streamed, not joined whole
                yield from _container(item, level + 1)
            else:
                yield encode(item, level + 1)
        yield outer + "}"
        return
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _records(items: list[Any] | tuple[Any, ...]) -> bool:
    """Whether ``items`` are dicts of one same non-empty key order (flat or not)."""
    first = items[0]
    if type(first) is not dict or not first:
        return False
    keys = list(first)
    return all(type(item) is dict and list(item) == keys for item in items)


def _column(values: list[Any], level: int) -> list[str]:
    """One column of records, encoded: a column of strings, whole numbers or finite
    floats in one C-level pass (strings with nulls nearly so), any other by
    :func:`encode`."""
    kinds = set(map(type, values))
    if kinds <= {str}:
        return list(map(_string, values))
    if kinds <= {str, type(None)}:
        return [_string(v) if v is not None else "null" for v in values]
    if kinds <= {int}:
        return list(map(int.__repr__, values))
    if kinds <= {float} and all(map(math.isfinite, values)):
        return list(map(float.__repr__, values))
    return [encode(v, level) for v in values]


def _record_rows(items: list[Any] | tuple[Any, ...], level: int) -> Iterator[str]:
    """The records of a list at nesting ``level`` (each a dict of the same keys), joined
    as the encoder joins them, a batch at a time."""
    keys = list(items[0])
    rows = iter(items)
    batches = ([[record[k] for record in batch] for k in keys]
               for batch in iter(lambda: list(islice(rows, BATCH)), []))
    return _batches(keys, batches, level)


def _table_rows(keys: Sequence[str], columns: Sequence[Sequence[Any]],
                level: int) -> Iterator[str]:
    """A table's rows, as :func:`_record_rows` writes the same records (its columns cut
    into the same batches)."""
    size = len(columns[0])
    batches = ([list(column[start:start + BATCH]) for column in columns]
               for start in range(0, size, BATCH))
    return _batches(keys, batches, level)


def _batches(keys: Sequence[Any], batches: Iterable[list[list[Any]]],
             level: int) -> Iterator[str]:
    """Records of ``keys`` at nesting ``level`` from batches of their columns, joined as
    the encoder joins them."""
    inner = "\n" + " " * (_INDENT * (level + 1))
    outer = "\n" + " " * (_INDENT * level)
    separator = "," + outer
    # Each record is its pieces in turn: the separator, and each key's head (the keys
    # written once) followed by its value, then the closing brace. A batch's records are
    # one C-level join of the columns interleaved with the repeated heads (a third faster
    # than a %-template per record); the first record of all has no separator before it.
    heads = [separator + "{" + inner + _key(keys[0]) + ": "]
    heads += ["," + inner + _key(k) + ": " for k in keys[1:]]
    tail = outer + "}"
    first = True
    for batch in batches:
        columns = [_column(values, level + 1) for values in batch]
        size = len(columns[0])
        pieces = [part for head, column in zip(heads, columns, strict=True)
                  for part in (repeat(head, size), column)]
        text = "".join(chain.from_iterable(zip(*pieces, repeat(tail, size), strict=True)))
        yield text[len(separator):] if first else text
        first = False


def iterencode(value: Mapping[str, Any] | list[Any]) -> Iterator[str]:
    """``value`` as indented JSON, in pieces (their concatenation is the text)."""
    if isinstance(value, (list, tuple, dict)):
        yield from _container(value, 0)
    else:
        yield encode(value)
