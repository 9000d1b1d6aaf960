"""Parsing and validation of query strings, request bodies and headers (pure)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ErrorCode, SimError, validation_error
from .fleet import PLAN_SHAPES, REGIONS, STATUSES

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_DIGITS = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A validated list request: filters, page size and cursor."""

    limit: int
    cursor: str | None
    region: str | None = None
    status: str | None = None
    tags: Mapping[str, str] | None = None

    def filters(self) -> dict[str, str | None]:
        """The filter set in canonical form (what a cursor is bound to)."""
        tags = ",".join(f"{k}:{v}" for k, v in sorted(self.tags.items())) if self.tags else None
        return {"region": self.region, "status": self.status, "tags": tags}


def parse_limit(raw: str | None, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """``limit`` as an int in 1..maximum; absent means ``default``."""
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise validation_error(f"Parameter 'limit' must be an integer between 1 and {maximum}")
    return int(raw)


def parse_tags(raw: str) -> dict[str, str]:
    """``key:value,key2:value2`` into a dict; every pair needs a key and a value."""
    tags: dict[str, str] = {}
    for part in raw.split(","):
        key, sep, value = part.strip().partition(":")
        if not sep or not key.strip() or not value.strip():
            raise validation_error(
                "Parameter 'tags' must be comma-separated key:value pairs, e.g. team:data,env:prod"
            )
        tags[key.strip()] = value.strip()
    return tags


def parse_cursor(query: Mapping[str, str]) -> str | None:
    """The cursor, treating an empty ``cursor=`` as the first page."""
    return query.get("cursor") or None


def parse_instance_query(query: Mapping[str, str]) -> ListQuery:
    """Validate ``GET /instances`` parameters."""
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise validation_error(
            f"Parameter 'status' must be one of {', '.join(STATUSES)}, got {status!r}"
        )
    raw_tags = query.get("tags")
    return ListQuery(
        limit=parse_limit(query.get("limit")),
        cursor=parse_cursor(query),
        # An unknown region is a filter that matches nothing, not an error.
        region=query.get("region") or None,
        status=status,
        tags=parse_tags(raw_tags) if raw_tags is not None else None,
    )


@dataclass(frozen=True, slots=True)
class NewInstance:
    """A validated ``POST /instances`` body."""

    name: str
    plan: str
    image_id: str
    ssh_keys: tuple[str, ...]
    region: str
    tags: Mapping[str, str]


def parse_json_object(raw: bytes) -> dict[str, object]:
    """Decode a JSON object body; INVALID_JSON or VALIDATION_ERROR otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SimError(400, ErrorCode.INVALID_JSON, "Request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise validation_error("Request body must be a JSON object")
    return body


def _required_str(body: Mapping[str, object], name: str) -> str:
    if name not in body:
        raise validation_error(f"Field '{name}' is required")
    value = body[name]
    if not isinstance(value, str):
        raise validation_error(f"Field '{name}' must be a string")
    if not value.strip():
        raise validation_error(f"Field '{name}' must not be empty")
    return value


def parse_new_instance(raw: bytes) -> NewInstance:
    """Validate a ``POST /instances`` body, naming the first bad field."""
    body = parse_json_object(raw)
    name = _required_str(body, "name")
    plan = _required_str(body, "plan")
    if plan not in PLAN_SHAPES:
        raise validation_error(f"Field 'plan' must be one of {', '.join(PLAN_SHAPES)}")
    image_id = _required_str(body, "image_id")
    if "ssh_keys" not in body:
        raise validation_error("Field 'ssh_keys' is required")
    ssh_keys = body["ssh_keys"]
    if not isinstance(ssh_keys, list) or not all(isinstance(k, str) and k for k in ssh_keys):
        raise validation_error("Field 'ssh_keys' must be an array of non-empty strings")
    region = _required_str(body, "region")
    if region not in REGIONS:
        raise validation_error(f"Field 'region' must be one of {', '.join(REGIONS)}")
    tags = body.get("tags", {})
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise validation_error("Field 'tags' must be an object of strings")
    return NewInstance(
        name=name,
        plan=plan,
        image_id=image_id,
        ssh_keys=tuple(ssh_keys),
        region=region,
        tags=tags,
    )


def parse_object_metadata(header: str | None) -> dict[str, object] | None:
    """The ``X-Object-Metadata`` header as a JSON object, None if absent."""
    if header is None:
        return None
    try:
        value = json.loads(header)
    except ValueError as exc:
        raise validation_error("Header 'X-Object-Metadata' must be a JSON object") from exc
    if not isinstance(value, dict):
        raise validation_error("Header 'X-Object-Metadata' must be a JSON object")
    return value
