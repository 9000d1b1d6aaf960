"""API items become records faithfully, or are refused with a reason."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_audit.domain import model
from nexus_audit.domain.model import (
    InvalidRecordError,
    bucket_from_api,
    instance_from_api,
)

REFERENCE_INSTANCE: dict[str, Any] = {
    "id": "inst_9x7a2b1c", "name": "prod-web-01", "status": "running", "region": "us-east-1",
    "cpu": 4, "memory_gb": 16, "created_at": "2024-01-15T08:32:00Z",
}


def test_reference_sample_instance_parses() -> None:
    """The provider's documented sample becomes a record with no plan and no tags."""
    record = instance_from_api(REFERENCE_INSTANCE)
    assert record.id == "inst_9x7a2b1c"
    assert record.memory_gb == 16.0
    assert record.plan is None
    assert record.tags == "{}"
    assert record.extra == "{}"


def test_unknown_fields_and_tags_are_kept_canonically() -> None:
    """Fields we don't model go to extra; tags are sorted canonical JSON."""
    item = {**REFERENCE_INSTANCE, "plan": "standard", "tags": {"team": "a", "env": "prod"},
            "image_id": "img_1", "zone": "b"}
    record = instance_from_api(item)
    assert record.tags == '{"env":"prod","team":"a"}'
    assert json.loads(record.extra) == {"image_id": "img_1", "zone": "b"}


@pytest.mark.parametrize(
    "change",
    [{"id": None}, {"id": ""}, {"cpu": "4"}, {"cpu": True}, {"cpu": -1}, {"memory_gb": "x"},
     {"name": 5}, {"tags": {"a": 1}}, {"tags": ["a"]}, {"plan": 3}],
)
def test_bad_instances_are_refused(change: dict[str, Any]) -> None:
    """Items without an id or with wrong types cannot be recorded faithfully."""
    with pytest.raises(InvalidRecordError):
        instance_from_api({**REFERENCE_INSTANCE, **change})


def test_non_object_items_are_refused() -> None:
    """A list or a string where an object belongs is refused, not crashed on."""
    with pytest.raises(InvalidRecordError):
        instance_from_api(["inst_1"])
    with pytest.raises(InvalidRecordError):
        bucket_from_api("bk_1")


def test_reference_sample_bucket_parses() -> None:
    """The documented bucket sample becomes a record."""
    record = bucket_from_api({"id": "bk_prod-assets", "region": "us-central1",
                              "size_bytes": 4829348204, "access": "private",
                              "created_at": "2023-11-02T14:20:00Z"})
    assert record.size_bytes == 4829348204
    assert record.access == "private"


class Text(str):
    """A str subclass: valid for the field-by-field checks, not taken inline."""


_CYCLE: dict[str, Any] = {}
_CYCLE["self"] = _CYCLE
# Values around every bound the checks apply (types, lengths, signs, limits, non-finite,
# nesting, a dict that contains itself).
_VALUES: list[Any] = [
    None, True, False, "", "a", "x" * 1024, "x" * 1025, "é東\x00\n\"\\", Text("t"),
    0, 1, -1, 2**31 - 1, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 10**400, 0.0, -0.0, 0.5, -0.5,
    1e308, float("nan"), float("inf"), [], {}, ["a"], {"k": "v"}, {"k": 1}, {1: "v"},
    {"k": Text("v")}, _CYCLE, "b\ud800", {"k": "\udcff"}, {"\udcff": "v"},
    2147483647.0, 2147483647.5]
_FIELDS = ("id", "name", "status", "region", "cpu", "memory_gb", "plan", "tags", "created_at",
           "size_bytes", "access", "image_id", "extra", "zone")
_SAMPLES: dict[str, dict[str, Any]] = {
    "instance": {**REFERENCE_INSTANCE, "plan": "micro", "tags": {"team": "a", "env": "b"},
                 "image_id": "img_1"},
    "bucket": {"id": "bk_1", "region": "eu-1", "size_bytes": 10, "access": "private",
               "tags": {"k": "v"}, "created_at": None, "versioning": True},
}


def _outcome(convert: Callable[[object], object], item: object) -> object:
    """A conversion's record, or the type and message of what it raised."""
    try:
        return convert(item)
    except Exception as exc:  # compared, whatever it is
        return (type(exc), str(exc))


def _agree(item: object) -> None:
    assert _outcome(instance_from_api, item) == _outcome(model._checked_instance, item)
    assert _outcome(bucket_from_api, item) == _outcome(model._checked_bucket, item)


def test_the_inline_path_agrees_with_the_field_by_field_checks() -> None:
    """For valid items and every item off by one field (each field dropped, or set to a
    value of another type, past a length or a bound, negative, NaN, nested, odd tags),
    ``instance_from_api`` and ``bucket_from_api`` give exactly what the field-by-field
    checks give: the same record, or the same error."""
    for sample in _SAMPLES.values():
        _agree(sample)
        _agree(OrderedDict(sample))  # a dict subclass: valid, and never taken inline
        for field in _FIELDS:
            _agree({k: v for k, v in sample.items() if k != field})
            for value in _VALUES:
                _agree({**sample, field: value})


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(sorted(_SAMPLES)),
       changes=st.lists(st.tuples(st.sampled_from(_FIELDS), st.sampled_from(_VALUES)),
                        min_size=2, max_size=4))
def test_the_inline_path_agrees_on_several_faults(base: str,
                                                   changes: list[tuple[str, Any]]) -> None:
    """Items off by several fields at once give what the field-by-field checks give (the
    first fault they name)."""
    _agree({**_SAMPLES[base], **dict(changes)})


@pytest.mark.parametrize(("kind", "field"), [("instance", "cpu"), ("instance", "memory_gb"),
                                             ("bucket", "size_bytes")])
def test_an_integer_of_hundreds_of_digits_is_an_invalid_record(kind: str, field: str) -> None:
    """JSON bounds no integer: one past every float (10**400) is INVALID_RECORD naming the
    field, never an OverflowError escaping the crawl's named codes."""
    convert = instance_from_api if kind == "instance" else bucket_from_api
    with pytest.raises(InvalidRecordError, match=f"field '{field}' must be"):
        convert({**_SAMPLES[kind], field: 10**400})
