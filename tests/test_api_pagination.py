"""Cursor pagination: page shapes (pure) and cursor walks against aioresponses."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from nexus_audit.api import ApiStats, CloudNexusClient, CursorWalk, RateBudget
from nexus_audit.api.pagination import RepeatedCursorError, fetch_total, parse_page
from nexus_audit.config import AccountConfig, Secret
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import ProtocolError

INSTANCES = re.compile(r"^http://api\.test/v2/instances(\?.*)?$")


@pytest.fixture
def mock() -> AsyncIterator[aioresponses]:
    """Intercept every aiohttp request."""
    with aioresponses() as m:
        yield m


@pytest.fixture
async def client() -> AsyncIterator[CloudNexusClient]:
    """A client on a fake clock."""
    clock = FakeClock()
    account = AccountConfig(name="acme", api_url="http://api.test/v2",
                            api_key=Secret("nx_test_sk_pagination"))
    async with aiohttp.ClientSession() as session:
        yield CloudNexusClient(account, session, RateBudget(1000, clock=clock), stats=ApiStats(),
                               clock=clock, rng=random.Random(1))


def test_null_and_absent_next_cursor_both_end_the_walk() -> None:
    """``next_cursor`` null and a pagination without it both mean the last page."""
    assert parse_page({"instances": [], "pagination": {"next_cursor": None, "total": 0}},
                      "instances", paginated=True).next_cursor is None
    page = parse_page({"instances": [{"id": "a"}], "pagination": {"total": 1}}, "instances",
                      paginated=True)
    assert page.next_cursor is None
    assert page.total == 1
    assert page.items == [{"id": "a"}]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"instances": []}, "without 'pagination'"),
        ({"instances": {}, "pagination": {}}, "a dict"),
        ({"pagination": {}}, "missing"),
        ({"instances": [], "pagination": []}, "not an object"),
        ({"instances": [], "pagination": {"next_cursor": 5}}, "next_cursor"),
        ({"instances": [], "pagination": {"next_cursor": ""}}, "next_cursor"),
        ({"instances": [], "pagination": {"total": "9"}}, "total"),
        ({"instances": [], "pagination": {"total": True}}, "total"),
    ],
)
def test_malformed_pages_are_protocol_errors(payload: dict[str, Any], message: str) -> None:
    """Every shape the documented format does not allow is a ProtocolError naming it."""
    with pytest.raises(ProtocolError, match=message):
        parse_page(payload, "instances", paginated=True)


def test_unpaged_list_is_the_whole_list() -> None:
    """``/buckets`` without ``pagination`` is one complete page."""
    page = parse_page({"buckets": [{"id": "b"}]}, "buckets", paginated=False)
    assert (page.items, page.next_cursor, page.total) == ([{"id": "b"}], None, None)


def pages_callback(pages: list[dict[str, Any]], log: list[dict[str, str]]) -> Any:
    """Serve ``pages`` in order, recording each request's query."""
    queue = list(pages)

    def callback(url: Any, **kwargs: Any) -> CallbackResult:
        log.append(dict(url.query))
        return CallbackResult(payload=queue.pop(0))

    return callback


async def test_walk_follows_cursors_with_limit_100(client: CloudNexusClient,
                                                   mock: aioresponses) -> None:
    """The walk sends limit=100, passes each cursor back, and stops at a null cursor."""
    log: list[dict[str, str]] = []
    pages = [
        {"instances": [{"id": "a"}], "pagination": {"next_cursor": "c1", "total": 3}},
        {"instances": [{"id": "b"}], "pagination": {"next_cursor": "c2", "total": 3}},
        {"instances": [{"id": "c"}], "pagination": {"next_cursor": None, "total": 4}},
    ]
    mock.get(INSTANCES, callback=pages_callback(pages, log), repeat=True)
    walk = CursorWalk(client, "/instances", "instances", {"region": "eu-west-1"})
    seen = [item["id"] async for items in walk for item in items]
    assert seen == ["a", "b", "c"]
    assert log == [
        {"region": "eu-west-1", "limit": "100"},
        {"region": "eu-west-1", "limit": "100", "cursor": "c1"},
        {"region": "eu-west-1", "limit": "100", "cursor": "c2"},
    ]
    assert (walk.pages, walk.first_total, walk.last_total) == (3, 3, 4)


async def test_repeated_cursor_stops_the_walk(client: CloudNexusClient,
                                              mock: aioresponses) -> None:
    """A cursor handed out twice raises RepeatedCursorError instead of looping."""
    page = {"instances": [{"id": "a"}], "pagination": {"next_cursor": "same", "total": 9}}
    mock.get(INSTANCES, payload=page, repeat=True)
    with pytest.raises(RepeatedCursorError, match="repeated a cursor after 2 pages"):
        async for _ in CursorWalk(client, "/instances", "instances"):
            pass
    assert client.stats.total_requests == 2


async def test_page_without_pagination_is_reread_once(client: CloudNexusClient,
                                                      mock: aioresponses) -> None:
    """A page that lacks pagination is requested again with the same cursor, once."""
    log: list[dict[str, str]] = []
    pages = [
        {"instances": [{"id": "a"}]},
        {"instances": [{"id": "a"}], "pagination": {"next_cursor": None, "total": 1}},
    ]
    mock.get(INSTANCES, callback=pages_callback(pages, log), repeat=True)
    items = [i async for i in CursorWalk(client, "/instances", "instances")]
    assert items == [[{"id": "a"}]]
    assert log[0] == log[1]
    assert client.stats.retries == {("GET /instances", "protocol"): 1}


async def test_page_without_pagination_twice_fails(client: CloudNexusClient,
                                                   mock: aioresponses) -> None:
    """Two malformed answers for one page raise ProtocolError naming the endpoint."""
    mock.get(INSTANCES, payload={"instances": []}, repeat=True)
    with pytest.raises(ProtocolError, match="malformed page twice") as info:
        async for _ in CursorWalk(client, "/instances", "instances"):
            pass
    assert info.value.endpoint == "GET /instances"


async def test_fetch_total_is_one_cheap_request(client: CloudNexusClient,
                                                mock: aioresponses) -> None:
    """The unfiltered total costs one request with limit=1."""
    log: list[dict[str, str]] = []
    page = {"instances": [{"id": "a"}], "pagination": {"next_cursor": "x", "total": 123}}
    mock.get(INSTANCES, callback=pages_callback([page], log))
    assert await fetch_total(client, "/instances", "instances") == 123
    assert log == [{"limit": "1"}]
