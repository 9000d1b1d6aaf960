"""One simulator, several accounts: each key sees its own account, within its own limit."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nexus_audit.simulator.cli import add_arguments, config_from_args
from nexus_audit.simulator.runner import Simulator
from tests.procio import LineReader
from tests.sim_fixtures import MakeSimulator

ROOT = Path(__file__).resolve().parent.parent

KEYS = ("nx_test_sk_alpha", "nx_test_sk_beta", "nx_test_sk_gamma")


async def get(sim: Simulator, key: str, path: str, **params: str) -> tuple[int, Any]:
    """GET ``path`` of the API with ``key``: the status and the JSON body."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session, \
            session.get(f"{sim.url}{path}", params=params) as resp:
        return resp.status, await resp.json()


async def walk(sim: Simulator, key: str) -> list[str]:
    """Every instance id ``key`` lists, page by page."""
    ids: list[str] = []
    params = {"limit": "7"}
    while True:
        status, body = await get(sim, key, "/instances", **params)
        assert status == 200, body
        ids += [i["id"] for i in body["instances"]]
        if not body["pagination"]["next_cursor"]:
            return ids
        params["cursor"] = body["pagination"]["next_cursor"]


async def test_each_key_lists_its_own_account(make_simulator: MakeSimulator) -> None:
    """With three accounts, each key lists its account's fleet, whole and nothing else,
    with that fleet's total; the fleets differ."""
    sim = await make_simulator(api_keys=KEYS, accounts=3, instances=20, buckets=4)
    seen = [await walk(sim, key) for key in KEYS]
    for key, ids in zip(KEYS, seen, strict=True):
        assert sorted(ids) == sorted(i.id for i in sim.fleet_of(key).query_instances())
        assert len(ids) == 20
    assert len({frozenset(ids) for ids in seen}) == 3
    assert sim.fleet_of(KEYS[0]) is sim.fleet


async def test_a_cursor_is_good_only_for_its_account(make_simulator: MakeSimulator) -> None:
    """A cursor one account's key got is refused (400 INVALID_CURSOR) for another's."""
    sim = await make_simulator(api_keys=KEYS[:2], accounts=2, instances=10)
    status, body = await get(sim, KEYS[0], "/instances", limit="3")
    assert status == 200
    cursor = body["pagination"]["next_cursor"]
    status, body = await get(sim, KEYS[1], "/instances", limit="3", cursor=cursor)
    assert (status, body["error"]["code"]) == (400, "INVALID_CURSOR")
    status, _ = await get(sim, KEYS[0], "/instances", limit="3", cursor=cursor)
    assert status == 200


async def test_each_key_has_its_own_rate_limit(make_simulator: MakeSimulator) -> None:
    """One key spending its whole limit gets 429 while another account's key still gets
    answers with its full allowance."""
    sim = await make_simulator(api_keys=KEYS[:2], accounts=2, instances=3, rate_limit=2)
    assert [(await get(sim, KEYS[0], "/buckets"))[0] for _ in range(3)] == [200, 200, 429]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEYS[1]}"}) as s, \
            s.get(f"{sim.url}/buckets") as resp:
        assert resp.status == 200
        assert resp.headers["X-RateLimit-Remaining"] == "1"


async def test_changes_stay_in_their_account(make_simulator: MakeSimulator) -> None:
    """An instance deleted, a bucket made public and an object stored through one key
    change that account alone: the other key cannot see or reach them."""
    sim = await make_simulator(api_keys=KEYS[:2], accounts=2, instances=5, buckets=3)
    mine, theirs = sim.fleet_of(KEYS[0]), sim.fleet_of(KEYS[1])
    victim = mine.query_instances()[0].id
    bucket = next(b.id for b in mine.query_buckets()
                  if theirs.get_bucket(b.id) is None)
    auth = {"Authorization": f"Bearer {KEYS[1]}"}
    async with aiohttp.ClientSession(headers=auth) as other:
        async with other.delete(f"{sim.url}/instances/{victim}") as resp:
            assert resp.status == 404
        async with other.put(f"{sim.url}/objects/{bucket}/k", data=b"x") as resp:
            assert resp.status == 404
        async with other.post(f"{sim.base_url}/_sim/buckets/{bucket}/access",
                              json={"access": "public"}) as resp:
            assert resp.status == 404
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEYS[0]}"}) as me:
        async with me.delete(f"{sim.url}/instances/{victim}") as resp:
            assert resp.status == 204
        async with me.put(f"{sim.url}/objects/{bucket}/k", data=b"xy") as resp:
            assert resp.status == 200
    assert victim not in {i.id for i in mine.query_instances()}
    assert len(theirs.query_instances()) == 5
    assert sim.state.accounts[0].objects is sim.objects
    assert sim.state.accounts[1].objects is not sim.objects


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_accounts_flag_gives_each_account_a_key(tmp_path: Path) -> None:
    """``--accounts 3`` makes three accounts with three fresh keys, or the three lines of
    ``--key-file``; a key count that does not match, or ``--key`` for several, is refused."""
    config = config_from_args(_parse("--accounts", "3"))
    assert config.accounts == 3
    assert len(set(config.api_keys)) == 3
    keys = tmp_path / "keys"
    keys.write_text("\n".join(KEYS) + "\n")
    assert config_from_args(_parse("--accounts", "3", "--key-file", str(keys))).api_keys == KEYS
    with pytest.raises(ValueError, match="3 keys for 2 accounts"):
        config_from_args(_parse("--accounts", "2", "--key-file", str(keys)))
    with pytest.raises(ValueError, match="--key names one key"):
        config_from_args(_parse("--accounts", "2", "--key", KEYS[0]))


def test_simulate_prints_a_key_per_account() -> None:
    """``simulate --accounts 2`` prints the URL, then one key per account, each listing
    its own fleet; SIGTERM stops it with exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_audit.simulator", "--port", "0", "--accounts", "2",
         "--instances", "4"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout is not None
        lines = LineReader(proc.stdout, name="simulate")
        url = lines.next_line(timeout=20, what="the base URL").strip()
        keys = [lines.next_line(timeout=20, what="a key").strip() for _ in range(2)]
        ids = []
        for key in keys:
            req = urllib.request.Request(  # noqa: S310 (local http)
                f"{url}/instances", headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (local http)
                ids.append({i["id"] for i in json.load(resp)["instances"]})
        assert len(ids[0]) == len(ids[1]) == 4
        assert ids[0] != ids[1]
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
