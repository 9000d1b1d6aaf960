"""Input validation: any client input is a 200 or a documented 400, never a crash."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus_audit.simulator import SimulatorConfig, SimulatorThread
from nexus_audit.simulator.errors import ErrorCode, SimError
from nexus_audit.simulator.fleet import REGIONS
from nexus_audit.simulator.validation import parse_new_instance

#: The filters (besides ``limit=5``) of the first pages whose next cursors the query
#: property may send back: a valid cursor reaches the paging path, not only its refusal.
CURSOR_FILTERS: tuple[dict[str, str], ...] = (
    {}, {"status": "stopped"}, {"region": REGIONS[0]}, {"status": "running", "region": REGIONS[1]})


@dataclass
class Served:
    """A simulator serving from its thread, and the next cursors of CURSOR_FILTERS' first
    pages with the last id each of those pages held."""

    sim: SimulatorThread
    cursors: list[tuple[str, str]]

    def get(self, query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """``GET /v2/instances?query`` through the real handler: status and JSON body."""
        url = f"{self.sim.url}/instances?{urllib.parse.urlencode(query)}"
        # Our own loopback simulator, http only.
        request = urllib.request.Request(url, headers={  # noqa: S310
            "Authorization": f"Bearer {self.sim.key}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """60 instances over the regions, no rate limit in the way; the cursors to reuse."""
    config = SimulatorConfig(instances=60, buckets=0, seed=4, rate_limit=1_000_000)
    with SimulatorThread(config) as sim:
        server = Served(sim, [])
        for filters in CURSOR_FILTERS:
            status, body = server.get({**filters, "limit": "5"})
            assert status == 200, body
            assert body["pagination"]["next_cursor"], filters  # a second page exists
            server.cursors.append((body["pagination"]["next_cursor"],
                                   body["instances"][-1]["id"]))
        yield server


_STATUS = st.sampled_from(["running", "stopped", "pending"]) | st.text(max_size=12)
_VALID = st.integers(min_value=0, max_value=len(CURSOR_FILTERS) - 1).map(lambda i: f"@{i}")
_QUERY = st.fixed_dictionaries({}, optional={
    "region": st.sampled_from(REGIONS) | st.text(max_size=20),
    "status": _STATUS,
    "tags": st.text(max_size=30),
    "limit": st.integers(min_value=-5, max_value=150).map(str) | st.text(max_size=6),
    # ``@N`` stands for the real next cursor of CURSOR_FILTERS[N]'s first page.
    "cursor": _VALID | st.text(max_size=40),
    "other": st.text(max_size=10),
})


@settings(max_examples=150, deadline=None)
@given(query=_QUERY)
@example(query={"cursor": "@0"})
@example(query={"cursor": "@1", "status": "stopped", "limit": "3"})
@example(query={"cursor": "@3", "status": "running", "region": REGIONS[1]})
@example(query={"cursor": "@2", "status": "running"})
def test_any_query_is_served_or_rejected_cleanly(served: Served, query: dict[str, str]) -> None:
    """Arbitrary query parameters, sent to the real handler, give a page or a 400
    (VALIDATION_ERROR or INVALID_CURSOR) in the error format; a valid cursor sent back
    with its own filters always gives the next page."""
    made_for: dict[str, str] | None = None
    after = ""
    cursor = query.get("cursor", "")
    if cursor.startswith("@") and cursor[1:].isdigit():
        index = int(cursor[1:])
        made_for = CURSOR_FILTERS[index]
        query = {**query, "cursor": served.cursors[index][0]}
        after = served.cursors[index][1]
    status, body = served.get(query)
    if status == 200:
        page = body["instances"]
        assert isinstance(body["pagination"]["total"], int)
        assert [i["id"] for i in page] == sorted(i["id"] for i in page)
        if after:
            assert all(i["id"] > after for i in page), "a page after the cursor"
        return
    assert status == 400, body
    assert set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["code"] in (ErrorCode.VALIDATION_ERROR, ErrorCode.INVALID_CURSOR)
    filters = {k: v for k, v in query.items() if k in ("region", "status", "tags")}
    limit = query.get("limit", "20")
    if made_for is not None and filters == made_for and limit.isdigit() \
            and 1 <= int(limit) <= 100:
        raise AssertionError(f"a valid cursor with its own filters was refused: {body}")


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


@settings(max_examples=150, deadline=None)
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
