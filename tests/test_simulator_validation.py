"""Input validation: any client input is a 200 or a documented 400, never a crash."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_audit.simulator import Fleet, ManualClock
from nexus_audit.simulator.cursor import CursorCodec, InvalidCursorError, filter_hash, make_page
from nexus_audit.simulator.errors import ErrorCode, SimError
from nexus_audit.simulator.validation import parse_instance_query, parse_new_instance

FLEET = Fleet.generate(seed=4, instances=30, buckets=0, clock=ManualClock())
CODEC = CursorCodec(b"k" * 32)
_PARAM = st.sampled_from(["region", "status", "tags", "limit", "cursor", "other"])


@settings(max_examples=150)
@given(query=st.dictionaries(_PARAM, st.text(max_size=40)))
def test_any_query_is_served_or_rejected_cleanly(query: dict[str, str]) -> None:
    """Arbitrary query parameters give a page or a 400 (VALIDATION_ERROR/INVALID_CURSOR)."""
    error: SimError | None = None
    try:
        q = parse_instance_query(query)
        make_page(
            FLEET.query_instances(region=q.region, status=q.status, tags=q.tags),
            key=lambda i: i.id,
            codec=CODEC,
            fhash=filter_hash("instances", q.filters()),
            cursor=q.cursor,
            limit=q.limit,
            now=ManualClock().time(),
        )
    except SimError as exc:
        error = exc
    except InvalidCursorError:
        pass  # the handler turns this into 400 INVALID_CURSOR
    if error is not None:
        assert (error.status, error.code) == (400, ErrorCode.VALIDATION_ERROR)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        k: _JSON | st.just(v)
        for k, v in {
            "name": "web-01",
            "plan": "nano",
            "image_id": "img",
            "ssh_keys": ["k"],
            "region": "us-east-1",
            "tags": {"team": "data"},
        }.items()
    },
)


@settings(max_examples=150)
@given(body=st.binary(max_size=60) | _FIELDS.map(lambda d: json.dumps(d).encode()))
def test_any_post_body_is_accepted_or_rejected_cleanly(body: bytes) -> None:
    """Arbitrary bodies parse or give 400 INVALID_JSON / VALIDATION_ERROR, nothing else."""
    error: SimError | None = None
    try:
        parse_new_instance(body)
    except SimError as exc:
        error = exc
    if error is not None:
        assert error.status == 400
        assert error.code in (ErrorCode.INVALID_JSON, ErrorCode.VALIDATION_ERROR)
