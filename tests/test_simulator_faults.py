"""Fault injection: each scripted fault does what it says; random faults fire by odds."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from multidict import CIMultiDict

from nexus_audit.simulator import FaultKind, Simulator
from nexus_audit.simulator.faults import FaultInjector
from tests.sim_fixtures import MakeSimulator


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes, CIMultiDict[str]]:
    async with session.get(url) as r:
        return r.status, await r.read(), r.headers.copy()


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("500", 500, "INTERNAL_ERROR"),
        ("502", 502, "BAD_GATEWAY"),
        ("503", 503, "SERVICE_UNAVAILABLE"),
        ("403", 403, "FORBIDDEN"),
        ("invalid_cursor", 400, "INVALID_CURSOR"),
    ],
)
async def test_error_faults(
    simulator: Simulator,
    sim_session: aiohttp.ClientSession,
    kind: str,
    status: int,
    code: str,
) -> None:
    """Status faults answer in the error format, ``times`` times after ``after`` requests."""
    simulator.faults.script(kind, path="/v2/instances", times=2, after=1)
    url = f"{simulator.url}/instances"
    statuses = []
    for _ in range(4):
        got, body, headers = await _get(sim_session, url)
        statuses.append(got)
        if got != 200:
            error = json.loads(body)["error"]
            assert error["code"] == code
            assert error["request_id"] == headers["X-Request-Id"]
            assert "X-RateLimit-Remaining" in headers
    assert statuses == [200, status, status, 200]
    # Other paths are untouched.
    assert (await _get(sim_session, f"{simulator.url}/buckets"))[0] == 200


async def test_spurious_429_does_not_consume_quota(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """A scripted 429 has Retry-After and the real headers, and costs no quota."""
    simulator.faults.script("429", retry_after=7)
    status, body, headers = await _get(sim_session, f"{simulator.url}/buckets")
    assert status == 429
    assert json.loads(body)["error"]["code"] == "RATE_LIMITED"
    assert headers["Retry-After"] == "7"
    assert headers["X-RateLimit-Remaining"] == "1000"
    status, _, headers = await _get(sim_session, f"{simulator.url}/buckets")
    assert (status, headers["X-RateLimit-Remaining"]) == (200, "999")


async def test_reset_aborts_the_connection(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """A reset closes the connection without a response; the log shows status None."""
    simulator.faults.script("reset", path="/v2/instances", times=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(sim_session, f"{simulator.url}/instances")
    assert (await _get(sim_session, f"{simulator.url}/instances"))[0] == 200
    # Two resets for one failed call: aiohttp's client retries an idempotent request
    # once by itself after a dropped connection (aiohttp >= 3.10 behaviour).
    assert [r.status for r in simulator.request_log.records()] == [None, None, 200]


async def test_single_reset_is_hidden_by_aiohttp_retry(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """One reset on a GET is retried silently by aiohttp: the caller sees 200, the log both."""
    simulator.faults.script("reset", path="/v2/buckets")
    assert (await _get(sim_session, f"{simulator.url}/buckets"))[0] == 200
    assert [r.status for r in simulator.request_log.records()] == [None, 200]


async def test_slow_response_trips_client_timeout(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """A slow fault holds the answer for ``seconds``, long enough for a client timeout."""
    simulator.faults.script("slow", seconds=0.3)
    with pytest.raises(asyncio.TimeoutError):
        async with sim_session.get(
            f"{simulator.url}/buckets", timeout=aiohttp.ClientTimeout(total=0.05)
        ):
            pass


async def test_a_slow_fault_holds_until_released(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """A scripted slow answer (600 s) is held until the test releases it, then answered
    normally; once released, its later answers are not held at all."""
    slow = simulator.faults.script("slow", path="/v2/buckets", seconds=600, times=2)
    held = asyncio.create_task(_get(sim_session, f"{simulator.url}/buckets"))
    async with asyncio.timeout(10):
        # ``fired`` is a plain counter (no event to await): poll until the request arrives.
        while not slow.fired:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    assert not held.done()
    slow.release()
    async with asyncio.timeout(10):  # far less than the 600 s the fault would hold
        assert (await held)[0] == 200
        assert (await _get(sim_session, f"{simulator.url}/buckets"))[0] == 200
    assert slow.exhausted


async def test_truncated_and_invalid_json(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """Malformed-body faults send 200 with a body that is not valid JSON."""
    url = f"{simulator.url}/instances"
    _, good, _ = await _get(sim_session, url)
    for kind in ("truncated_json", "invalid_json"):
        simulator.faults.script(kind)
        status, body, headers = await _get(sim_session, url)
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        with pytest.raises(ValueError):  # noqa: PT011 (json.JSONDecodeError is a ValueError)
            json.loads(body)
    simulator.faults.script("truncated_json")
    assert good.startswith((await _get(sim_session, url))[1])


async def test_structural_faults(simulator: Simulator, sim_session: aiohttp.ClientSession) -> None:
    """A page without pagination, an item without id, an item with cpu as a string."""
    url = f"{simulator.url}/instances"
    simulator.faults.script("no_pagination")
    body = json.loads((await _get(sim_session, url))[1])
    assert "pagination" not in body
    assert len(body["instances"]) == 20
    simulator.faults.script("missing_id")
    body = json.loads((await _get(sim_session, url))[1])
    assert "id" not in body["instances"][0]
    assert "id" in body["instances"][1]
    simulator.faults.script("wrong_types")
    body = json.loads((await _get(sim_session, url))[1])
    assert isinstance(body["instances"][0]["cpu"], str)
    simulator.faults.script("wrong_types", path="/v2/buckets")
    body = json.loads((await _get(sim_session, f"{simulator.url}/buckets"))[1])
    assert isinstance(body["buckets"][0]["size_bytes"], str)


async def test_revoke_key_fault(simulator: Simulator, sim_session: aiohttp.ClientSession) -> None:
    """The revoke fault answers 401 and the key stays revoked."""
    simulator.faults.script("revoke_key", after=1)
    statuses = [(await _get(sim_session, f"{simulator.url}/buckets"))[0] for _ in range(3)]
    assert statuses == [200, 401, 401]


async def test_method_and_prefix_matching(
    simulator: Simulator, sim_session: aiohttp.ClientSession
) -> None:
    """A script can target one method and a path prefix."""
    simulator.faults.script("500", path="/v2/instances/*", method="DELETE")
    assert (await _get(sim_session, f"{simulator.url}/instances"))[0] == 200
    victim = simulator.fleet.instance_ids()[0]
    async with sim_session.delete(f"{simulator.url}/instances/{victim}") as r:
        assert r.status == 500
    assert victim in simulator.fleet.instance_ids()


async def test_random_faults_fire_by_probability(make_simulator: MakeSimulator) -> None:
    """With probability 1 every request gets the fault; the CLI's --fault-* map here."""
    sim = await make_simulator(fault_500=1.0)
    async with aiohttp.ClientSession(headers=dict(sim.auth_headers)) as s:
        for _ in range(3):
            async with s.get(f"{sim.url}/buckets") as r:
                assert r.status == 500
    sim = await make_simulator(fault_malformed=1.0)
    async with (
        aiohttp.ClientSession(headers=dict(sim.auth_headers)) as s,
        s.get(f"{sim.url}/buckets") as r,
    ):
        with pytest.raises(ValueError):  # noqa: PT011
            json.loads(await r.read())


def test_random_fault_rates_are_roughly_right() -> None:
    """Random faults fire at about their configured rates (seeded, so stable)."""
    inj = FaultInjector(seed=1, p500=0.2)
    hits = sum(inj.pick("GET", "/v2/instances") is not None for _ in range(5000))
    assert 800 < hits < 1200


def test_script_validation() -> None:
    """Unknown kinds, bad counts and unknown JSON fields are refused."""
    inj = FaultInjector()
    with pytest.raises(ValueError):  # noqa: PT011
        inj.script("meteor")
    with pytest.raises(ValueError):  # noqa: PT011
        inj.script("500", times=0)
    with pytest.raises(ValueError, match="unknown fault fields"):
        inj.script_from_json({"kind": "500", "color": "red"})
    with pytest.raises(ValueError, match="'times'"):
        inj.script_from_json({"kind": "500", "times": "2"})
    scripted = inj.script_from_json({"kind": "slow", "seconds": 2})
    assert (scripted.kind, scripted.seconds) == (FaultKind.SLOW, 2.0)
