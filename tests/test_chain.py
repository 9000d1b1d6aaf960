"""The evidence chain's encoding (pure functions): lines, elements and sums are the
README's recipe, written with ``json.dumps`` and :mod:`hashlib` alone."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus_audit.history.chain import (
    VIEW_COLUMNS,
    StateSum,
    canonical_array,
    element,
    expand,
    iso,
    log_line,
    row_line,
)


def documented(values: list[Any]) -> str:
    """The canonical JSON of the README: ``json.dumps`` with its arguments spelled out."""
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


class Text(str):
    """A str subclass (json encodes it as text; the fast path must not differ)."""


SCALARS = (st.none() | st.booleans() | st.text() | st.integers()
           | st.floats(allow_nan=False, allow_infinity=False) | st.text().map(Text))


@settings(max_examples=200, deadline=None)
@given(st.lists(SCALARS, max_size=12))
@example(["a\"b\\c\n\t\x00\x1f\x7f\u2028\ud800é東京\U0001f600"])
@example([0.0, -0.0, 1e16, 1e-7, 2.5, 10**30, -(10**19), True, False, None])
def test_canonical_array_is_json_dumps(values: list[Any]) -> None:
    """For any array of scalars (control characters, lone surrogates, huge ints, -0.0,
    exponents, str subclasses), the fast line is exactly ``json.dumps``'s text."""
    assert canonical_array(values) == documented(values)
    assert canonical_array(tuple(values)) == documented(values)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_canonical_array_refuses_what_json_refuses(bad: float) -> None:
    """A non-finite number is no JSON: refused as ``json.dumps(allow_nan=False)`` does."""
    with pytest.raises(ValueError, match="Out of range float"):
        canonical_array(["x", bad])


@settings(max_examples=100, deadline=None)
@given(id_=st.text(min_size=1), name=st.none() | st.text(),
       cpu=st.none() | st.integers(0, 2**31 - 1),
       memory=st.none() | st.integers(0, 10**6) | st.floats(0, 1e9), tags=st.text())
def test_row_line_and_element_follow_the_recipe(id_: str, name: str | None, cpu: int | None,
                                                memory: float | None, tags: str) -> None:
    """A row's line is ``[account, columns...]`` with cpu an integer and memory a float
    (as DuckDB returns them), and its element the SHA-256 of that line."""
    values = [id_, name, "running", "eu-1", cpu, memory, None, tags, "2026-01-01T00:00:00Z",
              "{}"]
    assert len(values) == len(VIEW_COLUMNS["instance_versions"])
    typed = [id_, name, "running", "eu-1", cpu, None if memory is None else float(memory),
             None, tags, "2026-01-01T00:00:00Z", "{}"]
    line = documented(["acme", *typed])
    assert row_line("acme", "instance_versions", values) == line
    assert element("acme", "instance_versions", values) == hashlib.sha256(
        line.encode("utf-8")).digest()
    assert row_line("acme", "bucket_sizes", (id_, True)) == documented(["acme", id_, 1])


def test_log_line_types_the_removal_flag() -> None:
    """A genesis line carries ``removed`` as a JSON boolean and integers as integers."""
    row = ("acme", "b-1", 5.0, 3, 1)
    assert log_line("bucket_size_log", row) == '["acme","b-1",5,3,true]'


def test_a_row_with_a_mismatched_width_is_refused() -> None:
    """A row with a column too many or too few is an error, never a shorter line."""
    with pytest.raises(ValueError, match="zip"):
        row_line("acme", "bucket_sizes", ("b-1",))


def test_state_sum_adds_and_removes_modulo_2048_bits() -> None:
    """Adding then removing an element leaves the sum as it was; the digest is SHA-256 of
    the 256-byte total."""
    total = StateSum()
    first = element("acme", "bucket_sizes", ("b-1", 10))
    total.add(first)
    before = total.as_json()
    second = element("acme", "bucket_sizes", ("b-2", 20))
    total.add(second)
    total.remove(second)
    assert total.as_json() == before
    expanded = int.from_bytes(hashlib.shake_256(first).digest(256), "big")
    assert before == {"rows": 1, "sum": hashlib.sha256(
        expanded.to_bytes(256, "big")).hexdigest()}


@settings(max_examples=200, deadline=None)
@given(st.lists(SCALARS, min_size=6, max_size=6), st.sampled_from(["acme", Text("acme"), 7]))
def test_row_line_of_any_scalars_is_the_canonical_array(values: list[Any],
                                                        account: Any) -> None:
    """A row whose columns hold any scalars (booleans, str subclasses, huge ints, None) in
    columns stored as they come, under any account value, gets the line ``json.dumps``
    writes, whichever way it is written."""
    assert row_line(account, "bucket_versions", values) == documented([account, *values])


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(-timedelta(hours=11))])))
@example(datetime(999, 12, 31, 23, 59, 59, 5, tzinfo=UTC))
@example(datetime(1000, 1, 1, tzinfo=timezone(timedelta(hours=1))))
def test_manifest_times_are_utc_with_microseconds(moment: datetime) -> None:
    """A time in a manifest is the documented ``%Y-%m-%dT%H:%M:%S.%fZ`` of its UTC
    moment, whatever its zone and year (four-digit years written the fast way)."""
    assert iso(moment) == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=8),
       st.lists(st.binary(min_size=32, max_size=32), max_size=8))
def test_moving_a_sum_is_adding_and_removing_one_by_one(added: list[bytes],
                                                        taken: list[bytes]) -> None:
    """A commit's changes applied at once give the sum and count of applying them one
    element at a time (removals below zero wrapping modulo 2**2048 alike), and leave the
    sum they start from as it was (it is the Store's until the commit is through)."""
    start = StateSum()
    start.add_all([hashlib.sha256(b"base").digest()] * 3)
    one_by_one = start.copy()
    for digest in added:
        one_by_one.add(digest)
    for digest in taken:
        one_by_one.remove(digest)
    moved = start.moved(added, taken)
    assert (moved.rows, moved.total) == (one_by_one.rows, one_by_one.total)
    assert moved.as_json() == one_by_one.as_json()
    assert (start.rows, start.total) == (3, 3 * expand(hashlib.sha256(b"base").digest()) % 2**2048)
