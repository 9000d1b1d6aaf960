"""The elements of a version view's rows (see :mod:`nexus_audit.history.chain`), computed by
DuckDB for each row whose line SQL writes exactly as :func:`~.chain.row_line` does, and
by Python for the others.

A commit that cannot move its state sums by the rows it changed reads the account's
current rows back and hashes each (a first commit of a million instances: a million).
In Python, fetching a row's columns and building and hashing its line took about 7 µs;
DuckDB builds and hashes it in 2 to 3 µs of CPU, and fetches 32 bytes, leaving Python
to expand and add the elements (1.5 µs). SQL's line is the canonical line when:

* no text value of the row holds a control character (U+0000 to U+001F, which
  ``encode_basestring`` writes as escapes): SQL escapes ``\\`` and ``"`` as it does and
  writes everything else as it is; a row that holds one is hashed in Python;
* integers are written in decimal (``CAST AS VARCHAR``, as ``int.__repr__``);
* each float is finite and not zero (a zero, whose sign ``=`` cannot see, or a
  non-finite value sends its row to Python), and its ``CAST AS VARCHAR`` is its
  ``float.__repr__``: checked, not assumed. After a read, every distinct float that SQL
  wrote is cast once more and compared with ``float.__repr__``; on any difference
  :class:`Inexact` is raised and the caller reads again in Python;
* NULL is ``null``.
"""

# S608: only our own identifiers (column names) are formatted into SQL; every value is a
# bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from json.encoder import encode_basestring
from operator import itemgetter
from typing import Any, Final, TypeVar

import duckdb

from nexus_audit.history.chain import VIEW_COLUMNS, column_converter, element

#: Rows read back at a time: a batch of Python objects, not the fleet.
FETCH_ROWS: Final = 10_000
#: One batch of rows: their ids, their elements, and each row's flag (the source's last
#: column: for the rows a commit moved, whether it opened the row).
Batch = tuple[list[str], list[bytes], list[Any]]
T = TypeVar("T")


class Inexact(Exception):  # noqa: N818 - a signal between two functions, not an error
    """DuckDB wrote a float of the rows it hashed otherwise than ``float.__repr__``."""


def _text(column: str) -> str:
    return (f"""coalesce('"' || replace(replace({column}, '\\', '\\\\'), '"', '\\"') """
            f"""|| '"', 'null')""")


def _kinds(view: str) -> tuple[list[str], list[str]]:
    """The view's text columns and its float columns."""
    texts = [c for c in VIEW_COLUMNS[view] if column_converter(c) is None]
    floats = [c for c in VIEW_COLUMNS[view] if column_converter(c) is float]
    return texts, floats


def line_sql(view: str) -> tuple[str, str]:
    """SQL for a row of ``view``: its canonical line (``$p``: the account's JSON text), and
    whether that line is exact (else the row is hashed in Python)."""
    texts, floats = _kinds(view)
    pieces = [_text(c) if c in texts else f"coalesce(CAST({c} AS VARCHAR), 'null')"
              for c in VIEW_COLUMNS[view]]
    line = "concat('[', $p, ',', " + ", ',', ".join(pieces) + ", ']')"
    exact = [f"NOT regexp_matches(concat({', '.join(texts)}), '[\\x00-\\x1f]')"]
    exact += [f"({c} IS NULL OR (isfinite({c}) AND {c} <> 0))" for c in floats]
    return line, " AND ".join(exact)


def elements_sql(view: str, source: str) -> str:
    """``source`` (a SELECT of ``view``'s columns in order and a flag) as rows of: id,
    element (NULL where SQL's line is not exact), each float column, the row's columns
    as a struct where the element is NULL, and the flag."""
    _, floats = _kinds(view)
    columns = VIEW_COLUMNS[view]
    line, exact = line_sql(view)
    cols = ", ".join(columns)
    listed = ", ".join([*floats, ""])
    return f"""SELECT id, CASE WHEN x THEN unhex(sha256(l)) END, {listed}
                      CASE WHEN x THEN NULL ELSE struct_pack({cols}) END, flag
               FROM (SELECT *, {line} AS l, {exact} AS x
                     FROM ({source}) AS s ({cols}, flag))"""


def fold_elements(cursor: duckdb.DuckDBPyConnection, source: str,
                  params: Mapping[str, Any], account: str, view: str,
                  fold: Callable[[Iterator[Batch]], T], *,
                  float_text: Callable[[float], str] = float.__repr__) -> T:
    """``fold`` over the batches of ``source``'s rows of ``view`` and their elements, built
    by DuckDB where exact (:func:`sql_batches`); folded again over Python's
    (:func:`python_batches`) if DuckDB wrote a float otherwise than ``float_text``."""
    try:
        return fold(sql_batches(cursor, source, params, account, view, float_text=float_text))
    except Inexact:
        return fold(python_batches(cursor, source, params, account, view))


def sql_batches(cursor: duckdb.DuckDBPyConnection, source: str, params: Mapping[str, Any],
                account: str, view: str, *,
                float_text: Callable[[float], str] = float.__repr__) -> Iterator[Batch]:
    """The rows of ``source`` (see :func:`elements_sql`) in batches, their elements built
    by DuckDB where exact (by :func:`~.chain.element` otherwise); :class:`Inexact` after
    the last batch if DuckDB wrote a float of them otherwise than ``float_text`` (Python's
    ``float.__repr__``, the canonical line's)."""
    _, floats = _kinds(view)
    result = cursor.execute(elements_sql(view, source),
                            {**params, "p": encode_basestring(account)})
    written: set[float] = set()
    rest = len(floats) + 2  # the struct's position (after id, element and the floats)
    while rows := result.fetchmany(FETCH_ROWS):
        digests: list[bytes] = [row[1] for row in rows]
        if None in digests:
            for n, row in enumerate(rows):
                if row[1] is None:
                    digests[n] = element(account, view, tuple(row[rest].values()))
        for position in range(2, rest):
            written.update([row[position] for row in rows if row[1] is not None])
        yield [row[0] for row in rows], digests, [row[-1] for row in rows]
    written.discard(None)
    if written:
        check = cursor.execute("SELECT list_transform($v, lambda x: CAST(x AS VARCHAR))",
                               {"v": sorted(written)}).fetchone()
        texts = check[0] if check else []
        if list(texts) != [float_text(v) for v in sorted(written)]:
            raise Inexact(f"{view}: DuckDB writes a float otherwise than Python")


def python_batches(cursor: duckdb.DuckDBPyConnection, source: str, params: Mapping[str, Any],
                   account: str, view: str) -> Iterator[Batch]:
    """The rows of ``source`` in batches, each element built by Python (the way of
    :func:`~.chain.element`, row by row)."""
    result = cursor.execute(source, params)
    flag = itemgetter(-1)
    while rows := result.fetchmany(FETCH_ROWS):
        yield ([str(row[0]) for row in rows],
               [element(account, view, row[:-1]) for row in rows], list(map(flag, rows)))
