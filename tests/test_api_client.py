"""CloudNexusClient against aioresponses: every status path, the headers, retries, the key."""

from __future__ import annotations

import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from structlog.testing import capture_logs

from nexus_audit.api import ApiStats, CloudNexusClient, RateBudget
from nexus_audit.api.client import request_seconds
from nexus_audit.config import AccountConfig, Secret
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import (
    AuthError,
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    ServerError,
    TransportError,
)

KEY = "nx_test_sk_0123456789abcdef"
BASE = "http://api.test/v2"
INSTANCES = re.compile(r"^http://api\.test/v2/instances(\?.*)?$")
PAGE = {"instances": [], "pagination": {"next_cursor": None, "total": 0}}


def error_body(code: str, message: str, request_id: str = "req_abc") -> dict[str, Any]:
    """The API's error format."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}


@pytest.fixture
def clock() -> FakeClock:
    """Time that moves only when the client sleeps."""
    return FakeClock()


@pytest.fixture
def mock() -> AsyncIterator[aioresponses]:
    """Intercept every aiohttp request."""
    with aioresponses() as m:
        yield m


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[CloudNexusClient]:
    """A client with a generous budget, a fake clock and seeded jitter."""
    account = AccountConfig(name="acme", api_url=BASE, api_key=Secret(KEY))
    async with aiohttp.ClientSession() as session:
        budget = RateBudget(1000, clock=clock, rng=random.Random(3))
        yield CloudNexusClient(account, session, budget, stats=ApiStats(), timeout=5.0,
                               clock=clock, rng=random.Random(7))


def reset_in(clock: FakeClock, seconds: int) -> str:
    """An X-RateLimit-Reset header value ``seconds`` from the fake clock's now."""
    return str(int(clock.now().timestamp()) + seconds)


async def test_ok_returns_the_object_and_counts_it(client: CloudNexusClient,
                                                   mock: aioresponses) -> None:
    """A 200 returns the JSON object, sends the key only as a bearer header, counts once."""
    seen: dict[str, Any] = {}

    def capture(url: Any, **kwargs: Any) -> CallbackResult:
        seen["url"] = str(url)
        seen["headers"] = kwargs["headers"]
        return CallbackResult(payload=PAGE, headers={"X-RateLimit-Remaining": "998",
                                                      "X-RateLimit-Limit": "1000"})

    mock.get(INSTANCES, callback=capture)
    assert await client.get_json("/instances", {"limit": "100"}) == PAGE
    assert seen["headers"]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in seen["url"]
    assert "limit=100" in seen["url"]
    assert client.stats.requests == {("GET /instances", "200"): 1}
    assert client.stats.rate_limit_remaining == 998
    assert client.stats.rate_limit_limit == 1000
    assert KEY not in repr(client)


@pytest.mark.parametrize(
    ("status", "error", "fragment"),
    [
        (400, BadRequestError, "rejected the request"),
        (401, AuthError, "invalid or expired"),
        (403, ForbiddenError, "allow-list"),
        (404, NotFoundError, "NEXUS_API_URL"),
    ],
)
async def test_client_errors_fail_at_once(client: CloudNexusClient, mock: aioresponses,
                                          clock: FakeClock, status: int,
                                          error: type[Exception], fragment: str) -> None:
    """400/401/403/404 raise their typed error with code, message and request id, no retry."""
    mock.get(INSTANCES, status=status, payload=error_body("SOME_CODE", "API says no", "req_42"))
    with capture_logs() as logs, pytest.raises(error) as info:
        await client.get_json("/instances")
    exc = info.value
    assert fragment in str(exc)
    assert "API says no" in str(exc)
    assert (exc.status, exc.code, exc.request_id) == (status, "SOME_CODE", "req_42")  # type: ignore[attr-defined]
    assert exc.endpoint == "GET /instances"  # type: ignore[attr-defined]
    assert client.stats.total_requests == 1
    assert client.stats.total_retries == 0
    assert clock.slept == []
    event = next(e for e in logs if e["event"] == "api.error")
    assert (event["status"], event["code"], event["request_id"]) == (status, "SOME_CODE", "req_42")


async def test_429_waits_retry_after_then_succeeds(client: CloudNexusClient,
                                                   mock: aioresponses, clock: FakeClock) -> None:
    """429 with Retry-After: every caller waits that long (plus jitter), then it retries."""
    mock.get(INSTANCES, status=429, payload=error_body("RATE_LIMITED", "slow down"),
             headers={"Retry-After": "7"})
    mock.get(INSTANCES, payload=PAGE)
    assert await client.get_json("/instances") == PAGE
    assert len(clock.slept) == 1
    assert 7.0 <= clock.slept[0] <= 7.8
    assert client.stats.retries == {("GET /instances", "429"): 1}
    assert client.stats.requests[("GET /instances", "429")] == 1


async def test_429_with_only_reset_waits_for_the_reset(client: CloudNexusClient,
                                                       mock: aioresponses,
                                                       clock: FakeClock) -> None:
    """429 without Retry-After waits until X-RateLimit-Reset (plus jitter)."""
    mock.get(INSTANCES, status=429, payload=error_body("RATE_LIMITED", "slow down"),
             headers={"X-RateLimit-Reset": reset_in(clock, 25), "X-RateLimit-Remaining": "0",
                      "X-RateLimit-Limit": "1000"})
    mock.get(INSTANCES, payload=PAGE)
    assert await client.get_json("/instances") == PAGE
    assert 25.0 <= sum(clock.slept) <= 26.5


async def test_429_past_the_allowance_raises(client: CloudNexusClient,
                                             mock: aioresponses) -> None:
    """A key that stays rate limited ends in RateLimitedError, not an endless wait."""
    mock.get(INSTANCES, status=429, payload=error_body("RATE_LIMITED", "no"),
             headers={"Retry-After": "1"}, repeat=True)
    with pytest.raises(RateLimitedError, match="429"):
        await client.get_json("/instances")
    assert client.stats.requests[("GET /instances", "429")] == client.policy.max_rate_limited + 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_then_success_retries_with_backoff(client: CloudNexusClient,
                                                     mock: aioresponses, clock: FakeClock,
                                                     status: int) -> None:
    """A transient 5xx is retried after a jittered backoff no longer than the first step."""
    mock.get(INSTANCES, status=status, payload=error_body("INTERNAL_ERROR", "oops"))
    mock.get(INSTANCES, payload=PAGE)
    assert await client.get_json("/instances") == PAGE
    assert client.stats.retries == {("GET /instances", str(status)): 1}
    assert len(clock.slept) == 1
    assert 0.0 <= clock.slept[0] <= client.policy.base_delay


async def test_exhausted_retries_raise_server_error(client: CloudNexusClient,
                                                    mock: aioresponses,
                                                    clock: FakeClock) -> None:
    """A 500 that persists gives up after max_retries with capped, growing backoff."""
    mock.get(INSTANCES, status=500, payload=error_body("INTERNAL_ERROR", "down", "req_9"),
             repeat=True)
    with pytest.raises(ServerError) as info:
        await client.get_json("/instances")
    assert info.value.request_id == "req_9"
    retries = client.policy.max_retries
    assert client.stats.requests[("GET /instances", "500")] == retries + 1
    assert len(clock.slept) == retries
    for n, slept in enumerate(clock.slept, start=1):
        assert 0.0 <= slept <= min(client.policy.max_delay, client.policy.base_delay * 2 ** (n - 1))


async def test_timeout_is_retried(client: CloudNexusClient, mock: aioresponses) -> None:
    """A timeout counts as a transport failure (code ``error``) and is retried."""
    mock.get(INSTANCES, exception=TimeoutError())
    mock.get(INSTANCES, payload=PAGE)
    assert await client.get_json("/instances") == PAGE
    assert client.stats.requests[("GET /instances", "error")] == 1
    assert client.stats.retries == {("GET /instances", "timeout"): 1}


async def test_connection_reset_is_retried_then_gives_up(client: CloudNexusClient,
                                                         mock: aioresponses) -> None:
    """Connection resets are retried; when they persist, TransportError says so."""
    mock.get(INSTANCES, exception=aiohttp.ServerDisconnectedError(), repeat=True)
    with pytest.raises(TransportError, match="connection failed"):
        await client.get_json("/instances")
    assert client.stats.retries[("GET /instances", "connection")] == client.policy.max_retries


async def test_truncated_json_is_retried(client: CloudNexusClient, mock: aioresponses) -> None:
    """A 2xx body that is not JSON (cut short) is treated as a transport failure."""
    mock.get(INSTANCES, body='{"instances": [{"id": "i-1"', content_type="application/json")
    mock.get(INSTANCES, payload=PAGE)
    assert await client.get_json("/instances") == PAGE
    assert client.stats.retries == {("GET /instances", "invalid_json"): 1}


async def test_non_object_json_is_a_protocol_error(client: CloudNexusClient,
                                                   mock: aioresponses) -> None:
    """A 2xx JSON array is not the documented format: ProtocolError, not retried."""
    mock.get(INSTANCES, payload=[1, 2, 3])
    with pytest.raises(ProtocolError, match="expected an object"):
        await client.get_json("/instances")
    assert client.stats.total_retries == 0


async def test_remaining_zero_waits_for_reset(client: CloudNexusClient, mock: aioresponses,
                                              clock: FakeClock) -> None:
    """After an answer with X-RateLimit-Remaining 0 the next request waits for the reset."""
    mock.get(INSTANCES, payload=PAGE, headers={
        "X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": reset_in(clock, 20)})
    mock.get(INSTANCES, payload=PAGE)
    await client.get_json("/instances")
    assert clock.slept == []
    await client.get_json("/instances")
    assert len(clock.slept) == 1
    assert 20.0 <= clock.slept[0] <= 21.0


async def test_the_key_never_appears_in_errors(client: CloudNexusClient,
                                               mock: aioresponses) -> None:
    """Even an API message that echoes the key is redacted in the exception text."""
    mock.get(INSTANCES, status=401, payload=error_body("UNAUTHORIZED", f"bad key {KEY}"))
    with pytest.raises(AuthError) as info:
        await client.get_json("/instances")
    assert KEY not in str(info.value)
    assert "[REDACTED]" in str(info.value)
    assert info.value.hint


async def test_error_without_json_body_keeps_the_status(client: CloudNexusClient,
                                                        mock: aioresponses) -> None:
    """An error with a plain-text body still raises its typed error with the text."""
    mock.get(INSTANCES, status=404, body="no such route", headers={"X-Request-Id": "req_h"})
    with pytest.raises(NotFoundError) as info:
        await client.get_json("/instances")
    assert info.value.request_id == "req_h"
    assert "no such route" in str(info.value)


async def test_put_object_sends_metadata_and_body(client: CloudNexusClient,
                                                  mock: aioresponses) -> None:
    """put_object PUTs the bytes with X-Object-Metadata and returns the API's answer."""
    seen: dict[str, Any] = {}

    def capture(url: Any, **kwargs: Any) -> CallbackResult:
        seen.update(url=str(url), **kwargs)
        return CallbackResult(payload={"etag": "abc", "content_hash": "sha256:x"})

    mock.put(f"{BASE}/objects/bk_reports/2026%2F01%2Freport.json", callback=capture)
    answer = await client.put_object("bk_reports", "2026/01/report.json", b"{}",
                                     {"kind": "report"}, "application/json")
    assert answer == {"etag": "abc", "content_hash": "sha256:x"}
    assert seen["data"] == b"{}"
    assert json.loads(seen["headers"]["X-Object-Metadata"]) == {"kind": "report"}
    assert seen["headers"]["Content-Type"] == "application/json"
    assert client.stats.requests == {("PUT /objects", "200"): 1}


def test_request_time_grows_with_the_body() -> None:
    """No body: the request timeout alone; a body adds its transfer at the floor rate."""
    assert request_seconds(30.0, 0) == 30.0
    assert request_seconds(30.0, 16 * 2**20) == pytest.approx(30 + 16 * 2**20 / 125_000)


async def test_a_large_body_gets_time_for_its_transfer(client: CloudNexusClient,
                                                       mock: aioresponses) -> None:
    """A GET is bound by the request timeout; a 16 MiB PUT also by its transfer at 1 Mbit/s,
    so a slow link does not fail every part (and every retry of it)."""
    seen: list[aiohttp.ClientTimeout] = []

    def capture(url: Any, **kwargs: Any) -> CallbackResult:
        seen.append(kwargs["timeout"])
        return CallbackResult(payload={"etag": "abc", "content_hash": "sha256:x"})

    mock.get(INSTANCES, callback=capture)
    mock.put(f"{BASE}/objects/bk/big", callback=capture)
    await client.get_json("/instances")
    await client.put_object("bk", "big", bytes(16 * 2**20), {})
    assert [t.total for t in seen] == [5.0, pytest.approx(5.0 + 16 * 2**20 / 125_000)]


async def test_a_timed_out_upload_names_the_time_it_had(client: CloudNexusClient,
                                                        mock: aioresponses) -> None:
    """The error says how long the upload was given, not the bare request timeout."""
    mock.put(f"{BASE}/objects/bk/big", exception=TimeoutError(), repeat=True)
    with pytest.raises(TransportError) as info:
        await client.put_object("bk", "big", bytes(1_000_000), {})
    assert "no answer within 13s" in str(info.value)


async def test_with_stats_counts_into_both(client: CloudNexusClient, mock: aioresponses) -> None:
    """A scoped client counts into its own stats and the shared ones."""
    mock.get(INSTANCES, payload=PAGE, repeat=True)
    local = ApiStats()
    scoped = client.with_stats(local)
    await scoped.get_json("/instances")
    await client.get_json("/instances")
    assert local.total_requests == 1
    assert client.stats.total_requests == 2
