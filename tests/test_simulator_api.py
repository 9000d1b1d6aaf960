"""The simulator over HTTP, point by point against the CloudNexus v2 reference."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import aiohttp
import pytest

from nexus_audit.simulator import ManualClock, Simulator, SimulatorThread
from nexus_audit.simulator.clock import wall_seconds
from tests.sim_fixtures import MakeSimulator

REQUEST_ID = re.compile(r"req_[0-9a-f]{10}")
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


async def _walk(
    session: aiohttp.ClientSession,
    sim: Simulator,
    params: dict[str, str] | None = None,
    between: Any = None,
) -> list[dict[str, Any]]:
    """Follow next_cursor to the end; call ``between()`` after each page."""
    items: list[dict[str, Any]] = []
    query = dict(params or {})
    while True:
        async with session.get(f"{sim.url}/instances", params=query) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        items.extend(body["instances"])
        cursor = body["pagination"]["next_cursor"]
        if cursor is None:
            return items
        query["cursor"] = cursor
        if between is not None:
            between()


async def _error(resp: aiohttp.ClientResponse, status: int, code: str) -> str:
    """Assert the error format and return the message."""
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["code"] == code
    assert REQUEST_ID.fullmatch(body["error"]["request_id"])
    assert resp.headers["X-Request-Id"] == body["error"]["request_id"]
    message: str = body["error"]["message"]
    return message


# -- listing and pagination ----------------------------------------------------------


@pytest.mark.parametrize("limit", [None, "100"])
async def test_walk_returns_every_instance_once(
    simulator: Simulator, sim_session: aiohttp.ClientSession, limit: str | None
) -> None:
    """Following next_cursor (default 20 a page, or 100) yields every instance once."""
    params = {"limit": limit} if limit else {}
    items = await _walk(sim_session, simulator, params)
    ids = [i["id"] for i in items]
    assert ids == sorted(set(ids))
    assert set(ids) == set(simulator.fleet.instance_ids())
    log = simulator.request_log.records(path="/v2/instances")
    assert len(log) == -(-len(ids) // int(limit or 20))


async def test_page_shape_and_total(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """A page has instances with the documented fields and pagination {next_cursor, total}."""
    async with sim_session.get(f"{simulator.url}/instances") as resp:
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert len(body["instances"]) == 20
    assert body["pagination"]["total"] == 200
    assert isinstance(body["pagination"]["next_cursor"], str)
    first = body["instances"][0]
    assert {"id", "name", "status", "region", "cpu", "memory_gb", "tags", "image_id"} <= set(first)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["created_at"])


async def test_walk_with_creates_and_deletes_between_pages(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """Instances existing for the whole walk come back exactly once despite churn."""
    initial = set(simulator.fleet.instance_ids())
    deleted: set[str] = set()
    counter = iter(range(1000))

    def churn() -> None:
        n = next(counter)
        simulator.add_instance(name=f"prod-web-{n + 50}", region="us-west-2")
        ids = simulator.fleet.instance_ids()
        victim = ids[(n * 37) % len(ids)]
        simulator.delete_instance(victim)
        deleted.add(victim)
        simulator.churn_step()

    items = await _walk(sim_session, simulator, {"limit": "15"}, between=churn)
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids))
    gone = initial - set(simulator.fleet.instance_ids())
    assert initial - deleted - gone <= set(ids)


async def test_filters(simulator: Simulator, sim_session: aiohttp.ClientSession) -> None:
    """region, status and tags filter (all must match); total counts the matches."""
    params = {"region": "eu-west-1", "status": "running", "tags": "env:prod, team:data"}
    items = await _walk(sim_session, simulator, dict(params, limit="5"))
    expected = simulator.fleet.query_instances(
        region="eu-west-1", status="running", tags={"env": "prod", "team": "data"}
    )
    assert [i["id"] for i in items] == [i.id for i in expected]
    for status in ("running", "stopped", "pending"):
        async with sim_session.get(f"{simulator.url}/instances", params={"status": status}) as r:
            body = await r.json()
        assert body["pagination"]["total"] == len(simulator.fleet.query_instances(status=status))
        assert {i["status"] for i in body["instances"]} <= {status}
    async with sim_session.get(f"{simulator.url}/instances", params={"region": "mars-1"}) as r:
        assert (await r.json())["pagination"] == {"next_cursor": None, "total": 0}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "2.5"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"status": "terminated"}, "status"),
        ({"tags": "team"}, "tags"),
        ({"tags": "team:data,env"}, "tags"),
        ({"tags": ":x"}, "tags"),
    ],
)
async def test_bad_query_is_400(
    simulator: Simulator,
    sim_session: aiohttp.ClientSession,
    params: dict[str, str],
    field: str,
) -> None:
    """Bad limit/status/tags → 400 VALIDATION_ERROR naming the parameter."""
    async with sim_session.get(f"{simulator.url}/instances", params=params) as resp:
        assert f"'{field}'" in await _error(resp, 400, "VALIDATION_ERROR")


async def test_limit_bounds(simulator: Simulator, sim_session: aiohttp.ClientSession) -> None:
    """limit=1 and limit=100 are accepted."""
    for limit in ("1", "100"):
        async with sim_session.get(f"{simulator.url}/instances", params={"limit": limit}) as r:
            assert len((await r.json())["instances"]) == int(limit)


async def test_bad_cursors_are_invalid_cursor(
    make_simulator: MakeSimulator, sim_clock: ManualClock
) -> None:
    """Forged, garbled, filter-mismatched and stale cursors → 400 INVALID_CURSOR."""
    sim = await make_simulator(clock=sim_clock, cursor_max_age=600)
    async with aiohttp.ClientSession(headers=dict(sim.auth_headers)) as s:
        url = f"{sim.url}/instances"
        async with s.get(url, params={"status": "running"}) as r:
            cursor = (await r.json())["pagination"]["next_cursor"]
        other = await make_simulator()  # another secret: its cursors are forgeries here
        async with (
            aiohttp.ClientSession(headers=dict(other.auth_headers)) as s2,
            s2.get(f"{other.url}/instances", params={"status": "running"}) as r,
        ):
            foreign = (await r.json())["pagination"]["next_cursor"]
        bad = [
            {"status": "running", "cursor": "garbage!!"},
            {"status": "running", "cursor": cursor[:-4]},
            {"status": "running", "cursor": foreign},
            {"status": "stopped", "cursor": cursor},
            {"cursor": cursor},
        ]
        for params in bad:
            async with s.get(url, params=params) as r:
                await _error(r, 400, "INVALID_CURSOR")
        sim_clock.advance(600)
        async with s.get(url, params={"status": "running", "cursor": cursor}) as r:
            assert r.status == 200
        sim_clock.advance(1)
        async with s.get(url, params={"status": "running", "cursor": cursor}) as r:
            assert "expired" in await _error(r, 400, "INVALID_CURSOR")


# -- auth, rate limit, error format ---------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer nx_test_sk_wrong", "nx_test_sk_x"],
)
async def test_auth_rejects(simulator: Simulator, header: str | None) -> None:
    """Missing, malformed or wrong keys → 401 UNAUTHORIZED, no rate-limit headers."""
    headers = {} if header is None else {"Authorization": header}
    async with aiohttp.ClientSession() as s:
        for method, path in (
            ("GET", "/instances"),
            ("GET", "/buckets"),
            ("DELETE", "/instances/x"),
        ):
            async with s.request(method, simulator.url + path, headers=headers) as r:
                assert await _error(r, 401, "UNAUTHORIZED") == "Invalid or expired API key"
                assert "X-RateLimit-Limit" not in r.headers


async def test_several_keys_and_revocation(make_simulator: MakeSimulator) -> None:
    """Each key works and has its own quota; a revoked key gets 401 from then on."""
    sim = await make_simulator(api_keys=("nx_test_sk_a", "nx_test_sk_b"), rate_limit=5)
    async with aiohttp.ClientSession() as s:

        async def remaining(key: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            async with s.get(f"{sim.url}/buckets", headers=headers) as r:
                assert r.status == 200
                return int(r.headers["X-RateLimit-Remaining"])

        assert [await remaining("nx_test_sk_a") for _ in range(3)] == [4, 3, 2]
        assert await remaining("nx_test_sk_b") == 4
        sim.revoke_key("nx_test_sk_a")
        async with s.get(
            f"{sim.url}/buckets", headers={"Authorization": "Bearer nx_test_sk_a"}
        ) as r:
            await _error(r, 401, "UNAUTHORIZED")
        assert await remaining("nx_test_sk_b") == 3
        sim.add_key("nx_test_sk_c")
        assert await remaining("nx_test_sk_c") == 4


async def test_rate_limit_headers_on_every_response(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """Success and error responses alike carry integer X-RateLimit-* headers."""
    url = simulator.url
    calls = [
        ("GET", f"{url}/instances", None),
        ("GET", f"{url}/instances?limit=0", None),
        ("DELETE", f"{url}/instances/inst_nope", None),
        ("PATCH", f"{url}/instances", None),
        ("GET", f"{url}/nothing", None),
        ("POST", f"{url}/instances", b"{"),
        ("PUT", f"{url}/objects/bk_nope/k", b"x"),
    ]
    seen = []
    for method, target, data in calls:
        async with sim_session.request(method, target, data=data) as r:
            assert all(h in r.headers for h in RATE_HEADERS), (method, target, r.status)
            assert REQUEST_ID.fullmatch(r.headers["X-Request-Id"])
            seen.append(int(r.headers["X-RateLimit-Remaining"]))
            assert int(r.headers["X-RateLimit-Reset"]) > wall_seconds(simulator.clock)
    assert seen == list(range(999, 999 - len(calls), -1))


async def test_burst_gets_429_and_recovers(
    make_simulator: MakeSimulator, sim_clock: ManualClock
) -> None:
    """Past the limit: 429 RATE_LIMITED with Retry-After, not counted; next window is fresh."""
    sim = await make_simulator(clock=sim_clock, rate_limit=3, rate_window=60)
    async with aiohttp.ClientSession(headers=dict(sim.auth_headers)) as s:
        statuses = []
        for _ in range(5):
            async with s.get(f"{sim.url}/buckets") as r:
                statuses.append(r.status)
                last = r
                if r.status == 429:
                    await _error(r, 429, "RATE_LIMITED")
        assert statuses == [200, 200, 200, 429, 429]
        reset = int(last.headers["X-RateLimit-Reset"])
        assert last.headers["X-RateLimit-Remaining"] == "0"
        retry_after = int(last.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        assert reset - 60 <= sim_clock.time() < reset
        sim_clock.advance(retry_after)
        async with s.get(f"{sim.url}/buckets") as r:
            assert r.status == 200
            assert r.headers["X-RateLimit-Remaining"] == "2"
    assert [rec.status for rec in sim.request_log.records()] == [200, 200, 200, 429, 429, 200]


async def test_unknown_route_and_wrong_method(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """404 for unknown routes and 405 (with Allow) for wrong methods, in the error format."""
    async with sim_session.get(f"{simulator.base_url}/v1/instances") as r:
        await _error(r, 404, "NOT_FOUND")
    async with sim_session.put(f"{simulator.url}/instances") as r:
        await _error(r, 405, "METHOD_NOT_ALLOWED")
        assert set(r.headers["Allow"].split(", ")) == {"GET", "POST"}
    async with sim_session.get(f"{simulator.url}/instances/inst_x") as r:
        await _error(r, 405, "METHOD_NOT_ALLOWED")


async def test_unexpected_exception_is_500_without_traceback(
    simulator: Simulator, sim_session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a handler becomes 500 INTERNAL_ERROR in the error format."""

    def boom() -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(simulator.fleet, "query_buckets", boom)
    async with sim_session.get(f"{simulator.url}/buckets") as r:
        text = await r.text()
        assert "secret internals" not in text
        assert "Traceback" not in text
        await _error(r, 500, "INTERNAL_ERROR")
        assert "X-RateLimit-Remaining" in r.headers


# -- POST and DELETE ------------------------------------------------------------------

GOOD = {
    "name": "api-worker-03",
    "plan": "standard",
    "image_id": "img_ubuntu2204_v3",
    "ssh_keys": ["key_8f9a2b1c", "key_deploy_prod"],
    "region": "eu-west-2",
}


@pytest.mark.parametrize(
    ("plan", "cpu", "memory"),
    [("nano", 1, 1), ("micro", 2, 2), ("standard", 4, 16), ("performance", 16, 64)],
)
async def test_create_instance(
    simulator: Simulator,
    sim_session: aiohttp.ClientSession,
    plan: str,
    cpu: int,
    memory: int,
) -> None:
    """POST returns 201 with a pending instance whose plan sets cpu and memory."""
    async with sim_session.post(f"{simulator.url}/instances", json=dict(GOOD, plan=plan)) as r:
        assert r.status == 201
        body = await r.json()
    assert body["status"] == "pending"
    assert (body["plan"], body["cpu"], body["memory_gb"]) == (plan, cpu, memory)
    assert (body["name"], body["region"]) == ("api-worker-03", "eu-west-2")
    assert body["id"] in simulator.fleet.instance_ids()


def _without(name: str) -> dict[str, object]:
    return {k: v for k, v in GOOD.items() if k != name}


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b"{not json", "INVALID_JSON", None),
        (b"", "INVALID_JSON", None),
        (b"[1]", "VALIDATION_ERROR", None),
        (json.dumps(_without("name")).encode(), "VALIDATION_ERROR", "name"),
        (json.dumps(_without("plan")).encode(), "VALIDATION_ERROR", "plan"),
        (json.dumps(_without("image_id")).encode(), "VALIDATION_ERROR", "image_id"),
        (json.dumps(_without("ssh_keys")).encode(), "VALIDATION_ERROR", "ssh_keys"),
        (json.dumps(_without("region")).encode(), "VALIDATION_ERROR", "region"),
        (json.dumps(dict(GOOD, name="")).encode(), "VALIDATION_ERROR", "name"),
        (json.dumps(dict(GOOD, name=42)).encode(), "VALIDATION_ERROR", "name"),
        (json.dumps(dict(GOOD, plan="huge")).encode(), "VALIDATION_ERROR", "plan"),
        (json.dumps(dict(GOOD, ssh_keys="key_1")).encode(), "VALIDATION_ERROR", "ssh_keys"),
        (json.dumps(dict(GOOD, ssh_keys=[1])).encode(), "VALIDATION_ERROR", "ssh_keys"),
        (json.dumps(dict(GOOD, region="mars-1")).encode(), "VALIDATION_ERROR", "region"),
        (json.dumps(dict(GOOD, region=None)).encode(), "VALIDATION_ERROR", "region"),
    ],
)
async def test_create_instance_validation(
    simulator: Simulator,
    sim_session: aiohttp.ClientSession,
    body: bytes,
    code: str,
    field: str | None,
) -> None:
    """Bad bodies get 400 with INVALID_JSON or VALIDATION_ERROR naming the field."""
    before = len(simulator.fleet.instance_ids())
    async with sim_session.post(f"{simulator.url}/instances", data=body) as r:
        message = await _error(r, 400, code)
    if field:
        assert f"'{field}'" in message
    assert len(simulator.fleet.instance_ids()) == before


async def test_delete_instance(simulator: Simulator, sim_session: aiohttp.ClientSession) -> None:
    """DELETE → 204 with no body; again (or unknown) → 404 RESOURCE_NOT_FOUND."""
    victim = simulator.fleet.instance_ids()[0]
    async with sim_session.delete(f"{simulator.url}/instances/{victim}") as r:
        assert r.status == 204
        assert await r.read() == b""
    assert victim not in simulator.fleet.instance_ids()
    async with sim_session.delete(f"{simulator.url}/instances/{victim}") as r:
        assert await _error(r, 404, "RESOURCE_NOT_FOUND") == f"Instance {victim} does not exist"


# -- buckets and objects ----------------------------------------------------------------


async def test_buckets_unpaged(simulator: Simulator, sim_session: aiohttp.ClientSession) -> None:
    """By default every bucket comes in one response without a pagination key."""
    async with sim_session.get(f"{simulator.url}/buckets", params={"limit": "2"}) as r:
        body = await r.json()
    assert set(body) == {"buckets"}
    assert [b["id"] for b in body["buckets"]] == [b.id for b in simulator.fleet.query_buckets()]
    assert set(body["buckets"][0]) == {"id", "region", "size_bytes", "access", "created_at", "tags"}


async def test_buckets_paged(make_simulator: MakeSimulator) -> None:
    """With bucket_page_size the buckets page like instances."""
    sim = await make_simulator(buckets=23, bucket_page_size=5)
    ids: list[str] = []
    params: dict[str, str] = {}
    async with aiohttp.ClientSession(headers=dict(sim.auth_headers)) as s:
        while True:
            async with s.get(f"{sim.url}/buckets", params=params) as r:
                body = await r.json()
            assert body["pagination"]["total"] == 23
            assert len(body["buckets"]) <= 5
            ids.extend(b["id"] for b in body["buckets"])
            if body["pagination"]["next_cursor"] is None:
                break
            params = {"cursor": body["pagination"]["next_cursor"]}
        async with s.get(f"{sim.url}/buckets", params={"limit": "101"}) as r:
            await _error(r, 400, "VALIDATION_ERROR")
        async with s.get(f"{sim.url}/instances", params=params) as r:
            await _error(r, 400, "INVALID_CURSOR")  # a bucket cursor is no instance cursor
    assert ids == sorted(set(ids))
    assert len(ids) == 23


async def test_put_object(simulator: Simulator, sim_session: aiohttp.ClientSession) -> None:
    """PUT stores the bytes and metadata; returns size, etag and sha256 content hash."""
    bucket = simulator.fleet.query_buckets()[0]
    data = b"hello world\n" * 100
    headers = {
        "Content-Type": "application/octet-stream",
        "X-Object-Metadata": '{"category":"logs","retention":"30d"}',
    }
    url = f"{simulator.url}/objects/{bucket.id}/logs/2024/app.log"
    async with sim_session.put(url, data=data, headers=headers) as r:
        assert r.status == 200
        body = await r.json()
        etag = r.headers["ETag"]
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert etag == f'"{md5}"'
    assert body == {
        "bucket": bucket.id,
        "key": "logs/2024/app.log",
        "size": len(data),
        "etag": md5,
        "content_hash": "sha256:" + hashlib.sha256(data).hexdigest(),
    }
    stored = simulator.objects.get(bucket.id, "logs/2024/app.log")
    assert stored is not None
    assert stored.data == data
    assert stored.metadata == {"category": "logs", "retention": "30d"}
    assert simulator.fleet.get_bucket(bucket.id).size_bytes == bucket.size_bytes + len(data)  # type: ignore[union-attr]


@pytest.mark.parametrize("metadata", ["not json", "[1, 2]", '"text"', "{"])
async def test_put_object_bad_metadata(
    simulator: Simulator, sim_session: aiohttp.ClientSession, metadata: str
) -> None:
    """X-Object-Metadata that is not a JSON object → 400 naming the header."""
    bucket = simulator.fleet.query_buckets()[0].id
    url = f"{simulator.url}/objects/{bucket}/k"
    async with sim_session.put(url, data=b"x", headers={"X-Object-Metadata": metadata}) as r:
        assert "X-Object-Metadata" in await _error(r, 400, "VALIDATION_ERROR")
    assert simulator.objects.get(bucket, "k") is None


async def test_put_object_unknown_bucket(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """PUT into a bucket that does not exist → 404 RESOURCE_NOT_FOUND."""
    async with sim_session.put(f"{simulator.url}/objects/bk_nope/k", data=b"x") as r:
        assert await _error(r, 404, "RESOURCE_NOT_FOUND") == "Bucket bk_nope does not exist"


# -- request log and admin routes -------------------------------------------------------


async def test_request_log_records_everything(
    make_simulator: MakeSimulator, sim_clock: ManualClock
) -> None:
    """Every API request is logged with time, method, path, query, status and key id."""
    sim = await make_simulator(clock=sim_clock)
    async with aiohttp.ClientSession() as s:
        auth = dict(sim.auth_headers)
        async with s.get(f"{sim.url}/instances?status=running&limit=3", headers=auth):
            pass
        async with s.delete(f"{sim.url}/instances/inst_nope", headers=auth):
            pass
        async with s.get(f"{sim.url}/buckets"):
            pass
        async with s.get(f"{sim.base_url}/_sim/requests", headers=auth) as r:
            over_http = (await r.json())["requests"]
    records = sim.request_log.records()
    assert [(r.method, r.path, r.query, r.status, r.key_id) for r in records] == [
        ("GET", "/v2/instances", "status=running&limit=3", 200, sim.key_id()),
        ("DELETE", "/v2/instances/inst_nope", "", 404, sim.key_id()),
        ("GET", "/v2/buckets", "", 401, None),
    ]
    assert all(r.time == sim_clock.time() for r in records)
    assert over_http == [r.to_json() for r in records]
    assert sim.key not in json.dumps(over_http)


async def test_admin_routes(simulator: Simulator, sim_session: aiohttp.ClientSession) -> None:
    """/_sim routes churn, set bucket access and script faults; no rate limit, no log."""
    base = simulator.base_url
    async with sim_session.post(f"{base}/_sim/churn") as r:
        assert r.status == 200
        assert isinstance((await r.json())["events"], list)
    bucket = simulator.fleet.query_buckets()[0].id
    async with sim_session.post(
        f"{base}/_sim/buckets/{bucket}/access", json={"access": "public"}
    ) as r:
        assert (await r.json())["access"] == "public"
    assert simulator.fleet.get_bucket(bucket).access == "public"  # type: ignore[union-attr]
    async with sim_session.post(f"{base}/_sim/buckets/bk_nope/access", json={"access": "x"}) as r:
        await _error(r, 404, "RESOURCE_NOT_FOUND")
    async with sim_session.post(f"{base}/_sim/buckets/{bucket}/access", json={"access": 1}) as r:
        await _error(r, 400, "VALIDATION_ERROR")
    fault = {"kind": "503", "path": "/v2/buckets", "times": 1}
    async with sim_session.post(f"{base}/_sim/faults", json=fault) as r:
        assert r.status == 201
        assert "X-RateLimit-Remaining" not in r.headers
    async with sim_session.post(f"{base}/_sim/faults", json={"kind": "meteor"}) as r:
        await _error(r, 400, "VALIDATION_ERROR")
    async with sim_session.get(f"{simulator.url}/buckets") as r:
        await _error(r, 503, "SERVICE_UNAVAILABLE")
    assert [r.path for r in simulator.request_log.records()] == ["/v2/buckets"]
    async with aiohttp.ClientSession() as anonymous, anonymous.post(f"{base}/_sim/churn") as r:
        await _error(r, 401, "UNAUTHORIZED")


def test_thread_simulator_serves_sync_callers(simulator_thread: SimulatorThread) -> None:
    """SimulatorThread answers from its own loop; helpers work from the test's thread."""
    import urllib.request

    req = urllib.request.Request(  # noqa: S310 (our own http URL)
        f"{simulator_thread.url}/instances?limit=100", headers=dict(simulator_thread.auth_headers)
    )
    simulator_thread.add_instance(name="prod-web-99", instance_id="inst_00000000")
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (our own http URL)
        body = json.load(resp)
    assert body["instances"][0]["id"] == "inst_00000000"
    assert body["pagination"]["total"] == 201
