"""Row elements built by DuckDB are exactly the canonical lines' (chain.element), row for
row, whatever the values; where SQL's line would differ the row is hashed in Python."""

# S608: the tests format only their own column names into SQL.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nexus_audit.history.chain import VIEW_COLUMNS, element
from nexus_audit.history.elements import (
    Batch,
    Inexact,
    elements_sql,
    fold_elements,
    python_batches,
    sql_batches,
)

TYPES = {"cpu": "INTEGER", "memory_gb": "DOUBLE", "size_bytes": "BIGINT"}
# DuckDB holds UTF-8 only: no lone surrogates (a crawl cannot stage one either).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
ODD_TEXT = st.sampled_from(['{"k":"v"}', 'a"b\\c', "\\", '"', "\x00", "\n\t\x1f", "\x7f",
                            "é東京\U0001f600\u2028", ""])
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 1e16, 1e15, 9999999999999998.0, 1e-5, 1e-4, 0.1 + 0.2, 5e-324,
     1.7976931348623157e308, 2.0, 0.5, 16.0])


def table(view: str, rows: list[tuple[Any, ...]]) -> duckdb.DuckDBPyConnection:
    """An in-memory table ``v`` with the view's columns (and an ``opened`` flag), holding
    ``rows``."""
    con = duckdb.connect()
    columns = ", ".join(f"{c} {TYPES.get(c, 'VARCHAR')}" for c in VIEW_COLUMNS[view])
    con.execute(f"CREATE TABLE v ({columns}, opened BOOLEAN)")
    if rows:
        con.executemany(f"INSERT INTO v VALUES ({', '.join('?' * (len(rows[0])))})", rows)
    return con


def source(view: str) -> str:
    """The rows as the seal's queries select them: the view's columns, then a flag."""
    return f"SELECT {', '.join(VIEW_COLUMNS[view])}, opened FROM v ORDER BY id"


def collect(batches: Iterator[Batch]) -> list[tuple[str, bytes, Any]]:
    """Every row's id, element and flag."""
    return [row for ids, digests, flags in batches for row in zip(ids, digests, flags,
                                                                   strict=True)]


INSTANCE_ROWS = st.lists(st.tuples(
    TEXT, st.none() | TEXT | ODD_TEXT, TEXT | ODD_TEXT, st.none() | TEXT,
    st.none() | st.integers(-(2**31) + 1, 2**31 - 1), st.none() | FLOATS,
    st.none() | ODD_TEXT, TEXT | ODD_TEXT, st.none() | TEXT, ODD_TEXT, st.booleans()),
    max_size=12, unique_by=lambda row: row[0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=INSTANCE_ROWS, account=TEXT | ODD_TEXT)
@example(rows=[("i-1", "web", "running", "eu-1", 4, -0.0, None, "{}", None, "{}", True),
               ("i-2", "db\n", "running", "eu-1", 4, 0.0, None, "{}", None, "{}", False)],
         account='acme "x"')
def test_instance_elements_from_sql_are_pythons(rows: list[tuple[Any, ...]],
                                                account: str) -> None:
    """For any instance rows (quotes, backslashes, control characters, NUL, non-ASCII,
    NULLs, negative and large integers, floats of any size, +0.0 and -0.0) and any
    account name, the elements DuckDB builds are those Python builds, in the same order
    with the same flags."""
    con = table("instance_versions", rows)
    sql = list(sql_batches(con, source("instance_versions"), {}, account,
                           "instance_versions"))
    python = list(python_batches(con, source("instance_versions"), {}, account,
                                 "instance_versions"))
    assert collect(iter(sql)) == collect(iter(python))


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.tuples(TEXT | ODD_TEXT, st.integers(-(2**63), 2**63 - 1),
                               st.booleans()), max_size=10, unique_by=lambda row: row[0]))
def test_bucket_size_elements_from_sql_are_pythons(rows: list[tuple[Any, ...]]) -> None:
    """Bucket sizes (BIGINT, negative to 2**63 - 1) hash alike in DuckDB and Python."""
    con = table("bucket_sizes", rows)
    assert (collect(sql_batches(con, source("bucket_sizes"), {}, "acme", "bucket_sizes"))
            == collect(python_batches(con, source("bucket_sizes"), {}, "acme",
                                      "bucket_sizes")))


def test_the_usual_row_is_hashed_by_duckdb() -> None:
    """A row of ordinary values (JSON tags and extra, a float) gets its element from SQL,
    not from the Python way: it is the canonical line's SHA-256."""
    row = ("i-1", "web-01", "running", "eu-1", 4, 16.0, "micro", '{"env":"prod"}', None,
           '{"image_id":"img_1"}')
    con = table("instance_versions", [(*row, True)])
    found = con.execute(elements_sql("instance_versions", source("instance_versions")),
                        {"p": '"acme"'}).fetchall()
    assert found[0][1] == element("acme", "instance_versions", row)
    # A control character sends its row to Python (no element from SQL).
    con = table("instance_versions", [(*row[:1], "web\n01", *row[2:], True)])
    found = con.execute(elements_sql("instance_versions", source("instance_versions")),
                        {"p": '"acme"'}).fetchall()
    assert found[0][1] is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_float_is_refused_as_python_refuses_it(bad: float) -> None:
    """A NaN or an infinity (no JSON number) is not hashed by SQL (whose text for it
    Python would confirm): the row fails as the canonical line fails."""
    con = table("instance_versions",
                [("i-1", "web", "running", "eu-1", 4, bad, None, "{}", None, "{}", True)])
    for batches in (sql_batches, python_batches):
        with pytest.raises(ValueError, match="Out of range float"):
            list(batches(con, source("instance_versions"), {}, "acme", "instance_versions"))


def test_a_float_duckdb_writes_otherwise_sends_the_read_to_python() -> None:
    """If DuckDB's text of a float were not Python's, the batches end in Inexact and the
    fold runs again over elements built by Python (the right ones)."""
    row = ("i-1", "web", "running", "eu-1", 4, 0.5, None, "{}", None, "{}", True)
    con = table("instance_versions", [row])
    wrong = "{:.3f}".format
    with pytest.raises(Inexact):
        list(sql_batches(con, source("instance_versions"), {}, "acme", "instance_versions",
                         float_text=wrong))
    # Hashed in SQL with DuckDB's "0.5", the fold's first pass is thrown away.
    passes: list[list[bytes]] = []

    def fold(batches: Iterator[Batch]) -> list[bytes]:
        passes.append([])
        for _, digests, _ in batches:
            passes[-1].extend(digests)
        return passes[-1]

    found = fold_elements(con, source("instance_versions"), {}, "acme", "instance_versions",
                          fold, float_text=wrong)
    assert len(passes) == 2
    assert found == [element("acme", "instance_versions", row[:-1])]
    assert fold_elements(con, source("instance_versions"), {}, "acme", "instance_versions",
                         fold) == found
    assert len(passes) == 3  # Python's text: one pass
