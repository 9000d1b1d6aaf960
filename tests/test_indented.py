"""The report's indented JSON encoder writes what the standard library's writes."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_audit.audit.rows import Table
from nexus_audit.output import indented

STANDARD = json.JSONEncoder(indent=2, ensure_ascii=False)

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text())
keys = st.text() | st.integers() | st.floats() | st.booleans() | st.none()
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5)
                   | st.tuples(inner, inner)),
    max_leaves=30)


@st.composite
def records(draw: st.DrawFn) -> list[dict[str, object]]:
    """A list of dicts with one key order, as the report's lists of rows are: values
    of one type per column, or mixed with nulls and nested values."""
    names = draw(st.lists(st.text(max_size=6), min_size=1, max_size=5, unique=True))
    column = {name: draw(st.sampled_from(["text", "int", "float", "mixed"])) for name in names}
    kind = {"text": st.text() | st.none(), "int": st.integers(),
            "float": st.floats(allow_nan=True, allow_infinity=True), "mixed": values}
    count = draw(st.integers(0, 12))
    return [{name: draw(kind[column[name]]) for name in names} for _ in range(count)]


def same(value: object) -> None:
    assert "".join(indented.iterencode(value)) == STANDARD.encode(value)  # type: ignore[arg-type]


@given(values)
@settings(max_examples=400)
def test_any_value_encodes_as_the_standard_encoder(value: object) -> None:
    """Any JSON value (NaN, infinities, big integers, non-string keys, any text) reads
    byte for byte as json.JSONEncoder(indent=2, ensure_ascii=False) writes it."""
    same(value)


@given(records(), st.integers(1, 4))
@settings(max_examples=300)
def test_lists_of_records_encode_as_the_standard_encoder(
        rows: list[dict[str, object]], batch: int) -> None:
    """Lists of records (the fast path: by columns, in batches) nested in a report-like
    object read as the standard encoder writes them, across batch boundaries."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indented, "BATCH", batch)
        same({"drift": rows, "n": len(rows), "nested": {"rows": rows, "x": [rows]}})


def test_records_with_a_nested_object_or_a_percent_in_a_key() -> None:
    """A record holding an object (drift's tags), a key with % in it, and a record whose
    keys differ from the first's all come out as the standard encoder's."""
    rows = [{"field": "tags", "old": {"env": "prod"}, "new": None, "100%": 1.5},
            {"field": "name", "old": "a\u2028b\x00", "new": "c", "100%": math.inf}]
    same({"drift": rows})
    same([*rows, {"other": 1}])


def test_what_json_refuses_is_refused() -> None:
    """A value JSON cannot hold raises TypeError, as the standard encoder does."""
    for bad in ({"x": {1, 2}}, {(1, 2): 3}, [object()]):
        with pytest.raises(TypeError):
            STANDARD.encode(bad)
        with pytest.raises(TypeError):
            "".join(indented.iterencode(bad))  # type: ignore[arg-type]


@given(records(), st.integers(1, 4))
@settings(max_examples=300)
def test_a_table_encodes_as_its_records(rows: list[dict[str, object]], batch: int) -> None:
    """A Table (the report's long lists, as columns) reads as the standard encoder writes
    the list of its records, at any nesting and across batch boundaries."""
    if not rows:
        return
    keys = tuple(rows[0])
    table = Table(keys, tuple([row[k] for row in rows] for k in keys))
    assert table.records() == rows
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indented, "BATCH", batch)
        for value in ({"drift": table, "n": 1}, [table, {"x": [table]}], table):
            expected = STANDARD.encode(_records(value))
            assert "".join(indented.iterencode(value)) == expected  # type: ignore[arg-type]


def _records(value: object) -> object:
    """``value`` with each Table replaced by the list of its records."""
    if isinstance(value, Table):
        return value.records()
    if isinstance(value, dict):
        return {k: _records(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_records(v) for v in value]
    return value


def test_a_table_in_an_object_is_written_a_batch_at_a_time() -> None:
    """A report's table is handed over in pieces of about a batch of records, never as
    one string of the whole list (121 MB at a million instances)."""
    table = Table(("id", "n"), ([f"i-{n}" for n in range(100)], list(range(100))))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indented, "BATCH", 10)
        pieces = list(indented.iterencode({"drift": table, "after": [1]}))
    whole = "".join(pieces)
    assert whole == STANDARD.encode({"drift": table.records(), "after": [1]})
    assert max(map(len, pieces)) < len(whole) / 5
