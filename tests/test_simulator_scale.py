"""The simulator at scale: indexes that stay true through churn, the seeded fleet kept,
and a stop that does not wait for busy requests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_audit.simulator import REGIONS, Fleet, ManualClock
from nexus_audit.simulator.clock import wall_seconds
from nexus_audit.simulator.synthetic import (
    _DAY,
    _ENVS,
    _ID_ALPHABET,
    _ODD_SHAPES,
    _PLAN_WEIGHTS,
    _ROLES,
    _STATUS_WEIGHTS,
    _TEAMS,
    FLEET_EPOCH,
    IMAGES,
    PLAN_SHAPES,
    STATUSES,
    Instance,
    random_instances,
)

ROOT = Path(__file__).resolve().parent.parent

_REGION = st.sampled_from([None, *REGIONS[:3], "mars-north-1"])
_STATUS = st.sampled_from([None, *STATUSES])
_TAGS = st.sampled_from(
    [None, {"env": "prod"}, {"team": "data", "env": "prod"}, {"team": "ml"}, {"env": "nope"}]
)
_OP = st.sampled_from(["churn", "add", "delete", "status", "advance", "query"])


def _brute(
    fleet: Fleet, region: str | None, status: str | None, tags: Mapping[str, str] | None
) -> list[str]:
    """The matching ids by a full scan of the fleet's own records, no index."""
    now = wall_seconds(fleet._clock)  # the oracle reads the raw records
    out = []
    for inst in fleet._instances.values():
        # A pending instance past its ready time is listed as running.
        shown = "running" if (
            inst.status == "pending" and inst.ready_at is not None and inst.ready_at <= now
        ) else inst.status
        if (
            (region is None or inst.region == region)
            and (status is None or shown == status)
            and all(inst.tags.get(k) == v for k, v in (tags or {}).items())
        ):
            out.append(inst.id)
    return sorted(out)


def _walk(
    fleet: Fleet,
    region: str | None,
    status: str | None,
    tags: Mapping[str, str] | None,
    limit: int,
) -> tuple[list[str], set[int]]:
    """Every page of one filter set: the ids in order and the totals the pages gave."""
    ids: list[str] = []
    totals: set[int] = set()
    after: str | None = None
    while True:
        page, more, total = fleet.page_instances(
            region=region, status=status, tags=tags, after=after, limit=limit
        )
        ids.extend(i.id for i in page)
        totals.add(total)
        if not more:
            return ids, totals
        after = page[-1].id


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_filtered_listings_equal_a_brute_force_filter_after_churn(data: st.DataObject) -> None:
    """After any mix of churn, creates, deletes, status changes and time passing (with
    filtered pages asked in between, so lazily built indexes must follow the changes),
    every filter set's pages, total and listing equal a brute-force filter."""
    clock = ManualClock(1_750_000_000.0)
    fleet = Fleet.generate(
        seed=data.draw(st.integers(0, 2**31)),
        instances=data.draw(st.integers(0, 120)),
        buckets=3,
        clock=clock,
        pending_seconds=5,
    )
    # Ask for tag filters first, so their lazily built indexes exist through the changes.
    for status in [None, *STATUSES]:
        for tags in ({"env": "prod"}, {"team": "data", "env": "prod"}):
            fleet.listing(region=REGIONS[0], status=status, tags=tags)
            fleet.listing(status=status, tags=tags)
    for n, op in enumerate(data.draw(st.lists(_OP, max_size=25))):
        ids = fleet.instance_ids()
        if op == "churn":
            fleet.churn_step()
        elif op == "add":
            fleet.add_instance(
                name=f"dev-web-{n}",
                plan="nano",
                region=data.draw(st.sampled_from([*REGIONS[:3], "mars-north-1"])),
                status=data.draw(st.sampled_from(STATUSES)),
                tags=data.draw(_TAGS) or {},
            )
        elif op == "delete" and ids:
            fleet.delete_instance(data.draw(st.sampled_from(ids)))
        elif op == "status" and ids:
            fleet.set_instance_status(
                data.draw(st.sampled_from(ids)), data.draw(st.sampled_from(STATUSES))
            )
        elif op == "advance":
            clock.advance(data.draw(st.sampled_from([1.0, 5.0])))
        elif op == "query":
            region, status, tags = data.draw(_REGION), data.draw(_STATUS), data.draw(_TAGS)
            assert fleet.listing(region=region, status=status, tags=tags) is not None
    limit = data.draw(st.integers(1, 30))
    for region in [None, *REGIONS[:3], "mars-north-1"]:
        for status in [None, *STATUSES]:
            for tags in [None, {"env": "prod"}, {"team": "data", "env": "prod"}]:
                expected = _brute(fleet, region, status, tags)
                walked, totals = _walk(fleet, region, status, tags, limit)
                assert walked == expected, (region, status, tags)
                assert totals == {len(expected)}
                listed = fleet.listing(region=region, status=status, tags=tags)
                assert [i.id for i in listed] == expected


def _reference_instance(
    rng: random.Random, counters: dict[str, int], taken: set[str]
) -> Instance:
    """One seeded instance as the simulator always drew it, in readable form."""
    while True:
        iid = "inst_" + "".join(rng.choices(_ID_ALPHABET, k=8))
        if iid not in taken:
            taken.add(iid)
            break
    env = rng.choices([e for e, _ in _ENVS], weights=[w for _, w in _ENVS])[0]
    role = rng.choice(_ROLES)
    stem = f"{env}-{role}"
    counters[stem] = counters.get(stem, 0) + 1
    tags = {"team": rng.choice(_TEAMS), "env": env}
    if rng.random() < 0.1:
        tags["cost-center"] = f"cc-{rng.randint(100, 999)}"
    roll = rng.random()
    if roll < 0.03:
        del tags["team"]
    elif roll < 0.05:
        del tags["env"]
    chosen = rng.choices(tuple(PLAN_SHAPES), weights=_PLAN_WEIGHTS)[0]
    cpu, mem = PLAN_SHAPES[chosen]
    plan: str | None = chosen
    if rng.random() < 0.04:
        plan = None
        if rng.random() < 0.5:
            cpu, mem = rng.choice(_ODD_SHAPES)
    status = rng.choices(STATUSES, weights=_STATUS_WEIGHTS)[0]
    return Instance(
        id=iid,
        name=f"{stem}-{counters[stem]:02d}",
        status=status,
        region=rng.choice(REGIONS),
        cpu=cpu,
        memory_gb=mem,
        plan=plan,
        tags=tags,
        image_id=rng.choice(IMAGES),
        created_at=FLEET_EPOCH - rng.uniform(1, 730) * _DAY,
    )


def test_fast_generator_draws_the_reference_fleet() -> None:
    """The inlined generator gives, seed for seed, the fleet the readable draws give
    (so fleets, and everything tested on them, stay what they were)."""
    for seed in (0, 1, 7, 2024):
        ref_rng, fast_rng = random.Random(seed), random.Random(seed)
        counters: dict[str, int] = {}
        taken: set[str] = set()
        expected = [_reference_instance(ref_rng, counters, taken) for _ in range(3000)]
        got, got_counters = random_instances(fast_rng, 3000)
        assert [i.to_json() for i in got] == [i.to_json() for i in expected]
        assert got_counters == counters
        # The stream is left where the reference leaves it (buckets are drawn next).
        assert fast_rng.random() == ref_rng.random()


def test_sigterm_stops_a_busy_simulator_promptly() -> None:
    """SIGTERM ends the process within seconds even with a request in flight that
    would take a minute to answer; exit 0, no traceback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_audit.simulator", "--port", "0", "--instances", "50",
         "--latency", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        key = proc.stdout.readline().strip()
        host, port = urlsplit(url).hostname, urlsplit(url).port
        assert host is not None
        assert port is not None
        with socket.create_connection((host, port), timeout=30) as slow:
            slow.sendall(
                f"GET /v2/instances HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {key}\r\n\r\n".encode()
            )
            # An admin request (no latency) answered after it: the slow one is in flight.
            req = urllib.request.Request(  # noqa: S310 (local http)
                f"{url.removesuffix('/v2')}/_sim/requests",
                headers={"Authorization": f"Bearer {key}"},
            )
            urllib.request.urlopen(req, timeout=10).close()  # noqa: S310 (local http)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            assert time.monotonic() - started < 5
        _, err = proc.communicate(timeout=5)
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
