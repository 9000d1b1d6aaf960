"""The simulator's multipart uploads: start, parts, complete, abort, and their errors."""

from __future__ import annotations

import hashlib
from typing import Any

import aiohttp
import pytest

from nexus_audit.simulator import Simulator
from nexus_audit.simulator.errors import ErrorCode, SimError
from nexus_audit.simulator.multipart import MultipartUploads, parse_part_list, parse_part_number
from nexus_audit.simulator.objects import ObjectStore
from tests.sim_fixtures import MakeSimulator

MIN_PART = 1024


@pytest.fixture
async def sim(make_simulator: MakeSimulator) -> Simulator:
    """A simulator with small parts allowed (1 KiB) and a 4 KiB single-request limit."""
    return await make_simulator(instances=3, buckets=2, min_part_bytes=MIN_PART,
                                max_object_bytes=4096)


@pytest.fixture
async def session(sim: Simulator) -> Any:
    """A session sending the simulator's key."""
    async with aiohttp.ClientSession(headers=dict(sim.auth_headers)) as s:
        yield s


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


async def _error(response: aiohttp.ClientResponse, status: int, code: str) -> str:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == response.headers["X-Request-Id"]
    return str(body["error"]["message"])


async def _start(s: aiohttp.ClientSession, url: str) -> str:
    headers = {"X-Object-Metadata": '{"category":"audit-report"}', "Content-Type": "text/csv"}
    async with s.post(url, params={"uploads": ""}, headers=headers) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["upload_id"])


async def _part(s: aiohttp.ClientSession, url: str, upload_id: str, n: int, data: bytes) -> str:
    async with s.put(url, params={"upload_id": upload_id, "part": str(n)}, data=data) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
        assert r.headers["ETag"] == f'"{body["etag"]}"'
        assert body["content_hash"] == "sha256:" + hashlib.sha256(data).hexdigest()
        return str(body["etag"])


async def test_round_trip(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Parts joined in order become one object with whole-body digests and the metadata."""
    bucket = sim.fleet.query_buckets()[0]
    url = f"{sim.url}/objects/{bucket.id}/evidence/big.csv"
    chunks = [b"a" * 3000, b"b" * 3000, b"c" * 10]  # more than 4 KiB in all
    upload_id = await _start(session, url)
    etags = [await _part(session, url, upload_id, n, c) for n, c in enumerate(chunks, 1)]
    parts = [{"part": n, "etag": e} for n, e in enumerate(etags, 1)]
    async with session.post(url, params={"upload_id": upload_id, "complete": ""},
                            json={"parts": parts}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    data = b"".join(chunks)
    assert body == {"bucket": bucket.id, "key": "evidence/big.csv", "size": len(data),
                    "etag": _md5(data), "parts": 3,
                    "content_hash": "sha256:" + hashlib.sha256(data).hexdigest()}
    stored = sim.objects.get(bucket.id, "evidence/big.csv")
    assert stored is not None
    assert stored.data == data
    assert stored.metadata == {"category": "audit-report"}
    assert stored.content_type == "text/csv"
    assert sim.fleet.get_bucket(bucket.id).size_bytes == bucket.size_bytes + len(data)  # type: ignore[union-attr]
    assert sim.uploads.in_progress() == []
    # A retried completion (its answer was lost) gets the same answer, counted once.
    async with session.post(url, params={"upload_id": upload_id, "complete": ""},
                            json={"parts": parts}) as r:
        assert r.status == 200
        assert (await r.json())["content_hash"] == body["content_hash"]
    assert sim.fleet.get_bucket(bucket.id).size_bytes == bucket.size_bytes + len(data)  # type: ignore[union-attr]


async def test_part_retry_replaces_the_part(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Sending a part number again replaces it; the completion lists the latest etag."""
    bucket = sim.fleet.query_buckets()[0].id
    url = f"{sim.url}/objects/{bucket}/k"
    upload_id = await _start(session, url)
    await _part(session, url, upload_id, 1, b"old")
    etag = await _part(session, url, upload_id, 1, b"new")
    async with session.post(url, params={"upload_id": upload_id, "complete": ""},
                            json={"parts": [{"part": 1, "etag": f'"{etag}"'}]}) as r:
        assert r.status == 200
    stored = sim.objects.get(bucket, "k")
    assert stored is not None
    assert stored.data == b"new"


async def test_completion_errors(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Wrong order, a missing part, a wrong etag and a small middle part are refused."""
    bucket = sim.fleet.query_buckets()[0].id
    url = f"{sim.url}/objects/{bucket}/k"
    upload_id = await _start(session, url)
    e1 = await _part(session, url, upload_id, 1, b"x" * MIN_PART)
    e2 = await _part(session, url, upload_id, 2, b"y" * 10)
    e3 = await _part(session, url, upload_id, 3, b"z" * 10)
    complete = {"upload_id": upload_id, "complete": ""}
    cases = [
        ([(2, e2), (1, e1)], "INVALID_PART_ORDER"),
        ([(1, e1), (1, e1)], "INVALID_PART_ORDER"),
        ([(1, e1), (4, e2)], "INVALID_PART"),
        ([(1, e1), (2, e1)], "INVALID_PART"),
        ([(1, e1), (2, e2), (3, e3)], "PART_TOO_SMALL"),
    ]
    for listed, code in cases:
        body = {"parts": [{"part": n, "etag": e} for n, e in listed]}
        async with session.post(url, params=complete, json=body) as r:
            await _error(r, 400, code)
    async with session.post(url, params=complete, json={"parts": []}) as r:
        await _error(r, 400, "VALIDATION_ERROR")
    async with session.post(url, params=complete, data=b"{") as r:
        await _error(r, 400, "INVALID_JSON")
    assert sim.objects.get(bucket, "k") is None
    # None of that spoiled the upload: a valid list still completes it.
    body = {"parts": [{"part": 1, "etag": e1}, {"part": 3, "etag": e3}]}
    async with session.post(url, params=complete, json=body) as r:
        assert r.status == 200
    stored = sim.objects.get(bucket, "k")
    assert stored is not None
    assert stored.data == b"x" * MIN_PART + b"z" * 10


async def test_abort_and_unknown_uploads(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Abort drops the parts; an aborted, unknown or misplaced upload id is 404."""
    bucket = sim.fleet.query_buckets()[0].id
    url = f"{sim.url}/objects/{bucket}/k"
    upload_id = await _start(session, url)
    await _part(session, url, upload_id, 1, b"data")
    other = f"{sim.url}/objects/{bucket}/other-key"
    async with session.put(other, params={"upload_id": upload_id, "part": "2"}, data=b"x") as r:
        await _error(r, 404, "UPLOAD_NOT_FOUND")
    async with session.delete(url, params={"upload_id": upload_id}) as r:
        assert r.status == 200
        assert await r.json() == {"upload_id": upload_id, "aborted": True}
    assert sim.uploads.in_progress() == []
    async with session.put(url, params={"upload_id": upload_id, "part": "2"}, data=b"x") as r:
        await _error(r, 404, "UPLOAD_NOT_FOUND")
    async with session.delete(url, params={"upload_id": upload_id}) as r:
        await _error(r, 404, "UPLOAD_NOT_FOUND")
    async with session.post(url, params={"upload_id": "up_nope", "complete": ""},
                            json={"parts": [{"part": 1, "etag": "x"}]}) as r:
        await _error(r, 404, "UPLOAD_NOT_FOUND")
    assert sim.objects.get(bucket, "k") is None


async def test_request_errors(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Unknown bucket, bad part numbers, bare POST/DELETE and oversized parts are refused."""
    bucket = sim.fleet.query_buckets()[0].id
    async with session.post(f"{sim.url}/objects/bk_nope/k", params={"uploads": ""}) as r:
        await _error(r, 404, "RESOURCE_NOT_FOUND")
    url = f"{sim.url}/objects/{bucket}/k"
    upload_id = await _start(session, url)
    for part in ("0", "10001", "x", ""):
        async with session.put(url, params={"upload_id": upload_id, "part": part},
                               data=b"x") as r:
            await _error(r, 400, "VALIDATION_ERROR")
    async with session.post(url) as r:
        await _error(r, 400, "VALIDATION_ERROR")
    async with session.delete(url) as r:
        await _error(r, 400, "VALIDATION_ERROR")
    async with session.put(url, params={"upload_id": upload_id, "part": "1"},
                           data=b"x" * 5000) as r:
        await _error(r, 413, "PAYLOAD_TOO_LARGE")
    async with session.post(url, params={"uploads": ""},
                            headers={"X-Object-Metadata": "[1]"}) as r:
        await _error(r, 400, "VALIDATION_ERROR")


def test_parsers_reject_bad_input() -> None:
    """Part numbers and completion bodies outside the protocol raise documented 400s."""
    assert parse_part_number("7") == 7
    assert parse_part_list(b'{"parts":[{"part":2,"etag":"\\"ab\\""}]}') == [(2, "ab")]
    for bad in (b"", b"[]", b'{"parts":[{"part":true,"etag":"a"}]}',
                b'{"parts":[{"part":1}]}', b'{"parts":"x"}'):
        with pytest.raises(SimError) as info:
            parse_part_list(bad)
        assert info.value.status == 400
        assert info.value.code in (ErrorCode.VALIDATION_ERROR, ErrorCode.INVALID_JSON)


def test_repeated_completion_needs_the_same_list() -> None:
    """A completed upload answers again only for the very same part list."""
    uploads = MultipartUploads(min_part_bytes=1)
    objects = ObjectStore()
    up = uploads.start("bk", "k", metadata=None, content_type="text/plain", now=0.0)
    etag = uploads.put_part(up.upload_id, "bk", "k", 1, b"abc").etag
    first = uploads.complete(up.upload_id, "bk", "k", [(1, etag)], objects=objects, now=1.0)
    again = uploads.complete(up.upload_id, "bk", "k", [(1, etag)], objects=objects, now=2.0)
    assert (first.repeat, again.repeat) == (False, True)
    assert again.obj == first.obj
    with pytest.raises(SimError) as info:
        uploads.complete(up.upload_id, "bk", "k", [(1, "other")], objects=objects, now=3.0)
    assert info.value.code == ErrorCode.UPLOAD_NOT_FOUND
