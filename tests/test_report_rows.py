"""A report's long lists held as columns (``audit/rows.py``) read, and render, exactly as
the tuples of answers they stand for: every output, byte for byte, on hostile values."""

from __future__ import annotations

import gc
import json
import math
import pickle
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_audit.audit import report as report_module
from nexus_audit.audit.report import Drift, Report, StaleInstance
from nexus_audit.audit.rows import Rows, Table, columns_of
from nexus_audit.domain import escape
from nexus_audit.errors import NoDataError, StoreError
from nexus_audit.history.store import Store
from nexus_audit.output import indented
from nexus_audit.output.render import render
from tests.test_queries import T0, H, report
from tests.test_report import build, rich_history

STANDARD = json.JSONEncoder(indent=2, ensure_ascii=False)
DRIFT_FIELDS = ("kind", "id", "change", "field", "old", "new", "observed_at", "account")
STALE_FIELDS = ("id", "name", "status", "region", "stale_since", "at_least", "hourly_cost",
                "account")

# Text a reader could trip on: quotes, backslashes, controls (C0, DEL, C1), line and
# paragraph separators, a % (the encoder's row template), non-ASCII, astral characters.
hostile = st.text(st.sampled_from(
    ['"', "\\", "\x00", "\n", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "%", "s",
     "é", "😀", "\ufeff", "a", " ", ",", "{"]), max_size=6) | st.text(max_size=8)
times = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                     timezones=st.just(UTC))
tags = st.dictionaries(hostile, hostile | st.none(), max_size=3)
drift_values = st.none() | hostile | st.integers(-2**40, 2**40) | tags | st.floats(
    allow_nan=False, allow_infinity=False)
drifts = st.builds(Drift, kind=st.sampled_from(["instance", "bucket"]), id=hostile,
                   change=st.sampled_from(["added", "removed", "changed"]),
                   field=st.none() | st.sampled_from(["name", "cpu", "tags"]) | hostile,
                   old=drift_values, new=drift_values, observed_at=times, account=hostile)
prices = st.floats(min_value=0, max_value=1e6) | st.sampled_from([0.0, -0.0, 0.1, 1e-7, 1e16])
stales = st.builds(StaleInstance, id=hostile, name=hostile, status=hostile, region=hostile,
                   stale_since=times, at_least=st.booleans(), hourly_cost=prices,
                   account=hostile)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """The rich history's report (every section filled), to carry the generated lists."""
    store = Store(tmp_path_factory.mktemp("rows") / "rich.duckdb")
    store.migrate()
    rich_history(store)
    return build(store)


def _as_rows(items: tuple[Any, ...], make: Any, fields: tuple[str, ...]) -> Rows[Any]:
    return Rows(make, columns_of(items, fields))


@given(st.lists(drifts, max_size=12), st.lists(stales, max_size=12), st.integers(1, 4))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_columns_render_as_the_answers_in_every_format(
        base: Report, drift: list[Drift], stale: list[StaleInstance], batch: int) -> None:
    """A report whose lists are Rows of columns writes the same JSON, CSV, Markdown and
    table as one holding the tuples of the same answers (across the JSON encoder's
    batches), and its JSON is the standard encoder's, escaped as the report escapes."""
    answers = replace(base, drift=tuple(drift), stale_instances=tuple(stale))
    columns = replace(base, drift=_as_rows(tuple(drift), Drift, DRIFT_FIELDS),
                      stale_instances=_as_rows(tuple(stale), StaleInstance, STALE_FIELDS))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indented, "BATCH", batch)
        for fmt in ("json", "csv", "markdown", "table"):
            assert render(columns, fmt) == render(answers, fmt), fmt
        reference = STANDARD.encode(answers.to_json_dict())
        assert render(columns, "json") == escape.json_text(reference) + "\n"
    assert columns.to_json_dict() == answers.to_json_dict()


def test_rows_read_as_the_tuple_of_their_answers() -> None:
    """Rows equal the tuple of their answers (and Rows of the same), index, slice, add
    and hash as it does, survive pickling (a report worker's answer), and refuse
    columns of different lengths."""
    t = datetime(2026, 3, 1, tzinfo=UTC)
    answers = (Drift("instance", "i-1", "added", None, None, None, t, "acme"),
               Drift("instance", "i-2", "changed", "cpu", 2, 4, t, "acme"))
    rows = Rows(Drift, columns_of(answers, DRIFT_FIELDS))
    assert rows == answers
    assert answers == rows
    assert rows == Rows(Drift, rows.columns)
    assert rows != answers[:1]
    assert rows != list(answers)
    assert len(rows) == 2
    assert rows[1] is rows[1]
    assert rows[1] == answers[1]
    assert rows[:1] == answers[:1]
    assert tuple(rows) == answers
    assert next(reversed(rows)).id == "i-2"
    assert rows + answers[:1] == answers + answers[:1]
    assert answers[:1] + rows == answers[:1] + answers
    assert hash(rows) == hash(answers)
    assert pickle.loads(pickle.dumps(rows)) == answers  # noqa: S301 - our own bytes
    empty = Rows(Drift, ((),) * 8)
    assert empty == ()
    assert not empty
    with pytest.raises(ValueError, match="lengths"):
        Rows(Drift, (["a"], []))
    with pytest.raises(ValueError, match="one length"):
        Table(("a", "b"), ([1], [2, 3]))


texts = st.none() | st.sampled_from(["2", "16", "0.5", "1e-05", "3.0", "-0.0", "{}",
                                     "{\"env\": \"a\\u2028\"}", "{\"k\": [1, 2.5]}",
                                     "stopped"]) | hostile
# As the drift query gives them: an added or removed row has no field, old or new.
changes = (st.tuples(st.sampled_from(["added", "removed"]), st.none(), st.none(), st.none())
           | st.tuples(st.just("changed"),
                       st.sampled_from(["name", "status", "cpu", "memory_gb", "tags"]),
                       texts, texts))
typed_rows = st.lists(st.tuples(st.sampled_from(["instance", "bucket"]), hostile, hostile,
                                changes, st.integers(-2**50, 2**55)), max_size=20)


def _parses(field: str | None, text: str | None) -> bool:
    try:
        report_module._drift_value(field, text)
    except ValueError:
        return False
    return True


@given(typed_rows)
@settings(max_examples=200)
def test_drift_rows_convert_as_each_answer_did(generated: list[tuple[Any, ...]]) -> None:
    """The drift query's rows made into Rows (by columns) are the Drift answers made one
    row at a time as before: cpu an int, memory a float, tags an object, the rest text,
    times from microseconds."""
    rows = [(k, a, i, c, f, o, n, t) for k, a, i, (c, f, o, n), t in generated
            if _parses(f, o) and _parses(f, n)]
    conv = report_module._drift_value
    one_by_one = tuple(
        Drift(kind=k, id=i, change=c, field=f, old=conv(f, o), new=conv(f, n),
              observed_at=report_module.from_epoch_us(t), account=a)
        for k, a, i, c, f, o, n, t in rows)
    # as the query hands them over: kind, account, change and field coded (run_query)
    accounts = sorted({a for _, a, *_ in rows})
    coded = [(report_module._DRIFT_KINDS.index(k) + 1, accounts.index(a) + 1, i,
              report_module._DRIFT_CHANGES.index(c) + 1,
              0 if f is None else report_module._DRIFT_FIELD_NAMES.index(f) + 1, o, n, t)
             for k, a, i, c, f, o, n, t in rows]
    made = report_module._drift(coded, accounts)
    assert made == one_by_one
    # equal is not enough for 2 == 2.0: the types are the answers' too
    assert [(type(d.old), type(d.new)) for d in made] == [
        (type(d.old), type(d.new)) for d in one_by_one]


def test_stale_rows_convert_as_each_answer_did() -> None:
    """Stale rows made into Rows are the answers made one row at a time as before
    (at_least a bool, even from NULL; the price a float)."""
    rows = [("acme", "i-1", "web", "stopped", "eu", 1_772_323_200_000_001, None, 0.25),
            ("acme", "i-2", "db", "pending", "us", 1_772_323_200_000_000, True, 2)]
    expected = tuple(
        StaleInstance(id=i, name=n, status=st_, region=r,
                      stale_since=report_module.from_epoch_us(s), at_least=bool(al),
                      hourly_cost=float(h), account=a)
        for a, i, n, st_, r, s, al, h in rows)
    made = report_module._stale(rows)
    assert made == expected
    assert [type(s.hourly_cost) for s in made] == [float, float]
    assert [s.at_least for s in made] == [False, True]
    assert report_module._stale([]) == ()
    assert report_module._drift([], []) == ()


def test_a_non_finite_price_is_refused_from_columns(base: Report) -> None:
    """money() refuses NaN from columns as it did from answers (never written as 0)."""
    stale = (StaleInstance("i-1", "n", "stopped", "eu", datetime(2026, 1, 1, tzinfo=UTC),
                           False, math.nan, "acme"),)
    report = replace(base, stale_instances=_as_rows(stale, StaleInstance, STALE_FIELDS))
    with pytest.raises(ValueError, match="non-finite"):
        render(report, "json")


def test_the_built_report_holds_rows(tmp_path: Path) -> None:
    """build_report's drift and stale instances are Rows, equal to their answers."""
    store = Store(tmp_path / "rich.duckdb")
    store.migrate()
    rich_history(store)
    report = build(store)
    assert isinstance(report.drift, Rows)
    assert isinstance(report.stale_instances, Rows)
    assert report.drift
    assert report.stale_instances
    assert report.drift == tuple(report.drift)
    assert report.stale_instances[0].stale_since.tzinfo is not None


def test_the_collector_is_paused_only_while_a_report_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """build_report reads, and Rows make their answers, with Python's cycle collector off
    and turn it back on after, on success and on error alike; a collector someone else
    turned off stays off."""
    store = Store(tmp_path / "rich.duckdb")
    store.migrate()
    rich_history(store)
    seen: list[bool] = []
    original = report_module._drift

    def watching(rows: list[tuple[Any, ...]], accounts: list[str]) -> Any:
        seen.append(gc.isenabled())
        return original(rows, accounts)

    monkeypatch.setattr(report_module, "_drift", watching)
    try:
        assert gc.isenabled()
        build(store)
        assert seen == [False]
        assert gc.isenabled()
        with pytest.raises(NoDataError):
            report(store, T0 - 10 * H, T0 - 9 * H)
        assert gc.isenabled()
        made = build(store)
        seen.clear()
        made.drift._items = None  # type: ignore[attr-defined]
        made.drift._make = lambda *row: seen.append(gc.isenabled()) or Drift(*row)  # type: ignore[attr-defined]
        assert made.drift[0] == made.drift[0]
        assert set(seen) == {False}
        assert gc.isenabled()
        gc.disable()
        build(store)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_drift_text_outside_its_domain_fails_the_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drift field the report does not know (drift.sql grew one, the code did not)
    fails the report naming it, never reads as another field or as none."""
    store = Store(tmp_path / "rich.duckdb")
    store.migrate()
    rich_history(store)
    assert any(d.field == "status" for d in build(store).drift)
    monkeypatch.setattr(report_module, "_DRIFT_FIELD_NAMES",
                        tuple(f for f in report_module._DRIFT_FIELD_NAMES if f != "status"))
    with pytest.raises(StoreError, match="drift: unexpected field status"):
        build(store)
