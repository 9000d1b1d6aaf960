"""API items become records faithfully, or are refused with a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

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
