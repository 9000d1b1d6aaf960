"""Signed cursors and keyset paging (the pure layer under GET /instances)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_audit.simulator import REGIONS, Fleet, ManualClock
from nexus_audit.simulator.cursor import (
    CursorCodec,
    InvalidCursorError,
    filter_hash,
    make_page,
    paginate,
)

NOW = 1_750_000_000.0
CODEC = CursorCodec(b"s" * 32, max_age=3600)
FH = filter_hash("instances", {"region": None, "status": "running", "tags": None})


def test_round_trip() -> None:
    """A cursor decodes to the id it was made for, under the same filters."""
    token = CODEC.encode("inst_abc", FH, NOW)
    assert "=" not in token
    assert CODEC.decode(token, FH, NOW + 10) == "inst_abc"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!",
        "bm90IGpzb24",  # base64 of "not json"
        base64.urlsafe_b64encode(b'{"last": "inst_x"}').decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
    ],
)
def test_garbled_cursor_is_rejected(token: str) -> None:
    """Anything that is not one of our cursors raises InvalidCursorError."""
    with pytest.raises(InvalidCursorError):
        CODEC.decode(token, FH, NOW)


def test_forged_cursor_is_rejected() -> None:
    """Changing the last id, or signing with another secret, breaks the signature."""
    token = CODEC.encode("inst_abc", FH, NOW)
    payload = json.loads(base64.urlsafe_b64decode(token + "=="))
    payload["last"] = "inst_zzz"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(InvalidCursorError, match="signature"):
        CODEC.decode(forged, FH, NOW)
    other = CursorCodec(b"o" * 32).encode("inst_abc", FH, NOW)
    with pytest.raises(InvalidCursorError, match="signature"):
        CODEC.decode(other, FH, NOW)


def test_cursor_is_bound_to_filters_and_kind() -> None:
    """A cursor for other filters or another resource kind is rejected."""
    token = CODEC.encode("inst_abc", FH, NOW)
    other = filter_hash("instances", {"region": "us-east-1", "status": "running", "tags": None})
    with pytest.raises(InvalidCursorError, match="different filters"):
        CODEC.decode(token, other, NOW)
    with pytest.raises(InvalidCursorError):
        CODEC.decode(token, filter_hash("buckets", {}), NOW)


def test_stale_and_future_cursors_are_rejected() -> None:
    """Older than max_age, or issued in the future, is not accepted."""
    token = CODEC.encode("inst_abc", FH, NOW)
    assert CODEC.decode(token, FH, NOW + 3600) == "inst_abc"
    with pytest.raises(InvalidCursorError, match="expired"):
        CODEC.decode(token, FH, NOW + 3601)
    with pytest.raises(InvalidCursorError):
        CODEC.decode(token, FH, NOW - 3600)


def test_paginate_is_keyset() -> None:
    """Items strictly after the last id, up to limit; ``more`` only when some remain."""
    items = ["a", "c", "e", "g"]
    assert paginate(items, key=str, after=None, limit=2) == (["a", "c"], True)
    assert paginate(items, key=str, after="c", limit=2) == (["e", "g"], False)
    assert paginate(items, key=str, after="b", limit=10) == (["c", "e", "g"], False)
    assert paginate(items, key=str, after="z", limit=10) == ([], False)


def test_last_page_has_no_cursor() -> None:
    """Exactly-full last page: next_cursor is None, total counts everything."""
    page = make_page(["a", "b"], key=str, codec=CODEC, fhash=FH, cursor=None, limit=2, now=NOW)
    assert (page.items, page.next_cursor, page.total) == (["a", "b"], None, 2)


_OPS = st.lists(st.sampled_from(["create", "delete"]), max_size=4)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_walk_returns_each_stable_instance_exactly_once(data: st.DataObject) -> None:
    """Whatever is created or deleted between pages, an instance present for the whole
    walk appears exactly once, and ids come back strictly increasing."""
    clock = ManualClock(NOW)
    fleet = Fleet.generate(
        seed=data.draw(st.integers(0, 2**31)),
        instances=data.draw(st.integers(0, 60)),
        buckets=0,
        clock=clock,
    )
    limit = data.draw(st.integers(1, 25))
    initial, deleted = set(fleet.instance_ids()), set()
    seen: list[str] = []
    cursor: str | None = None
    for page_no in range(1000):
        page = make_page(
            fleet.query_instances(),
            key=lambda i: i.id,
            codec=CODEC,
            fhash=FH,
            cursor=cursor,
            limit=limit,
            now=clock.time(),
        )
        seen.extend(i.id for i in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        clock.advance(1)
        # Stop creating after a while so the walk is sure to end.
        for op in data.draw(_OPS) if page_no < 50 else []:
            ids = fleet.instance_ids()
            if op == "create":
                fleet.add_instance(name="dev-web-01", plan="nano", region=REGIONS[0])
            elif ids:
                victim = data.draw(st.sampled_from(ids))
                fleet.delete_instance(victim)
                deleted.add(victim)
    else:
        pytest.fail("walk did not end")
    assert seen == sorted(set(seen))
    assert initial - deleted <= set(seen)
