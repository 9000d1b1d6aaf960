"""Uploads against the simulator: reports with metadata, multipart round trips and aborts,
the exposed-bucket refusal after a real crawl, and ``report --upload`` end to end."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog

from nexus_audit.api import ApiStats, CloudNexusClient, RateBudget, RetryPolicy
from nexus_audit.cli import main
from nexus_audit.config import AccountConfig, Secret
from nexus_audit.crawl.crawler import crawl_and_commit
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import ServerError
from nexus_audit.history.store import Store
from nexus_audit.output.archive import CONTENT_TYPES, Target, upload_object, upload_report
from nexus_audit.simulator import Simulator, SimulatorThread
from tests.sim_fixtures import MakeSimulator
from tests.test_archive import WINDOW

KIB = 1024
THRESHOLD = 1024 * KIB
PART = 256 * KIB
#: Two quick retries (the fake clock makes the backoff instant).
POLICY = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02)


@pytest.fixture
async def sim(make_simulator: MakeSimulator) -> Simulator:
    """A small simulator taking 256 KiB parts and at most 1 MiB per request."""
    return await make_simulator(instances=5, buckets=3, min_part_bytes=PART,
                                max_object_bytes=THRESHOLD)


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[CloudNexusClient]:
    """A client of the simulator on a fake clock (retries wait no real time)."""
    clock = FakeClock()
    account = AccountConfig(name="default", api_url=sim.url, api_key=Secret(sim.key))
    async with aiohttp.ClientSession() as session:
        yield CloudNexusClient(account, session, RateBudget(10_000, clock=clock),
                               stats=ApiStats(), clock=clock, policy=POLICY)


def requests(sim: Simulator) -> list[tuple[str, int | None]]:
    """(method, status) of every object request the simulator received."""
    return [(r.method + ("?" + r.query.split("=")[0] if r.query else ""), r.status)
            for r in sim.request_log.records() if "/objects/" in r.path]


@pytest.mark.parametrize("fmt", ["json", "markdown", "csv"])
async def test_report_round_trip(sim: Simulator, client: CloudNexusClient, fmt: str) -> None:
    """A report goes up whole with its content type and metadata; the digests verify."""
    bucket = sim.fleet.query_buckets()[0].id
    body = f"report as {fmt}\n".encode() * 50
    result = await upload_report(client, [], account="default",
                                 target=Target(bucket, f"audit/2026-03.{fmt}"), body=body,
                                 fmt=fmt, window=WINDOW, retention="400d", accounts=["acme"])
    stored = sim.objects.get(bucket, f"audit/2026-03.{fmt}")
    assert stored is not None
    assert stored.data == body
    assert stored.content_type == CONTENT_TYPES[fmt]
    assert stored.metadata == {
        "category": "audit-report", "retention": "400d", "format": fmt,
        "window": {"since": "2026-03-01T00:00:00Z", "until": "2026-03-31T00:00:00Z"},
        "sha256": hashlib.sha256(body).hexdigest(), "accounts": ["acme"]}
    assert (result.etag, result.content_hash, result.parts) == (stored.etag,
                                                                stored.content_hash, 0)
    assert client.stats.by_endpoint() == {"PUT /objects": {"200": 1}}


@pytest.mark.parametrize("from_file", [False, True])
async def test_multipart_round_trip(sim: Simulator, client: CloudNexusClient, tmp_path: Path,
                                    from_file: bool) -> None:
    """Over the threshold, the body goes up in parts and arrives byte for byte, verified."""
    data = random.Random(7).randbytes(THRESHOLD * 2 + 1000)
    source: bytes | Path = data
    if from_file:
        source = tmp_path / "big.json"
        source.write_bytes(data)
    bucket = sim.fleet.query_buckets()[1].id
    result = await upload_object(client, Target(bucket, "big/report.json"), source,
                                 content_type="application/json",
                                 metadata={"category": "audit-report"},
                                 threshold=THRESHOLD, part_size=PART)
    stored = sim.objects.get(bucket, "big/report.json")
    assert stored is not None
    assert stored.data == data
    assert result.parts == 9
    assert result.content_hash == "sha256:" + hashlib.sha256(data).hexdigest()
    assert stored.metadata == {"category": "audit-report"}
    assert requests(sim) == [("POST?uploads", 200), *[("PUT?upload_id", 200)] * 9,
                             ("POST?upload_id", 200)]
    assert sim.uploads.in_progress() == []


async def test_part_retried_then_succeeds(sim: Simulator, client: CloudNexusClient) -> None:
    """A part answered 500 once is retried by the client's policy; the upload completes."""
    bucket = sim.fleet.query_buckets()[0].id
    sim.faults.script("500", path=f"/v2/objects/{bucket}/k", method="PUT", after=2)
    data = b"z" * (THRESHOLD + 1)
    result = await upload_object(client, Target(bucket, "k"), data, content_type="text/csv",
                                 metadata={}, threshold=THRESHOLD, part_size=PART)
    assert result.parts == 5
    stored = sim.objects.get(bucket, "k")
    assert stored is not None
    assert stored.data == data
    assert client.stats.retries[("PUT /objects?part", "500")] == 1


async def test_part_failing_past_retries_aborts(sim: Simulator, client: CloudNexusClient) -> None:
    """A part failing past the retries aborts the upload: no parts kept, no object."""
    bucket = sim.fleet.query_buckets()[0].id
    sim.faults.script("500", path=f"/v2/objects/{bucket}/k", method="PUT", after=1,
                      times=POLICY.max_retries + 1)
    with pytest.raises(ServerError):
        await upload_object(client, Target(bucket, "k"), b"y" * (THRESHOLD + 1),
                            content_type="text/csv", metadata={}, threshold=THRESHOLD,
                            part_size=PART)
    assert sim.uploads.in_progress() == []
    assert sim.objects.get(bucket, "k") is None
    assert requests(sim)[-1] == ("DELETE?upload_id", 200)


async def test_refused_part_size_aborts(make_simulator: MakeSimulator,
                                        client: CloudNexusClient, sim: Simulator) -> None:
    """Parts below the server's minimum make the completion fail (400) and abort."""
    bucket = sim.fleet.query_buckets()[0].id
    with pytest.raises(Exception, match="PART_TOO_SMALL"):
        await upload_object(client, Target(bucket, "k"), b"x" * (THRESHOLD + 1),
                            content_type="text/csv", metadata={}, threshold=THRESHOLD,
                            part_size=PART // 2)
    assert sim.uploads.in_progress() == []
    assert requests(sim)[-1] == ("DELETE?upload_id", 200)


async def test_refusal_after_a_crawl_saw_the_bucket_public(
        sim: Simulator, client: CloudNexusClient, tmp_path: Path) -> None:
    """The latest crawl saw the bucket public: refused even once it is private again."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    target = sim.fleet.query_buckets()[2].id
    sim.set_bucket_access(target, "public-read")
    summary = await crawl_and_commit(client.account, store, client=client, kinds=("buckets",),
                                     clock=client.clock)
    assert summary.status == "succeeded"
    sim.set_bucket_access(target, "private")  # too late: the crawl is the evidence
    before = len(requests(sim))
    with pytest.raises(Exception, match="evidence must not leak"):
        await upload_report(client, store.latest(), account="default",
                            target=Target(target, "r.json"), body=b"{}", fmt="json",
                            window=WINDOW)
    assert len(requests(sim)) == before
    assert sim.objects.get(target, "r.json") is None


# -- the CLI, end to end --------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatorThread]:
    """A simulator thread, and the environment pointing nexus-audit at it."""
    saved = structlog.get_config()
    sim = SimulatorThread()
    sim.start_thread()
    for name in ("NEXUS_API_KEY_FILE", "NEXUS_AUDIT_CONFIG", "NEXUS_AUDIT_PRICING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEXUS_API_KEY", sim.key)
    monkeypatch.setenv("NEXUS_API_URL", sim.url)
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(tmp_path / "h.duckdb"))
    try:
        yield sim
    finally:
        sim.stop_thread()
        # main() configured logging onto this test's captured stderr; put back the very
        # same configuration objects, so loggers bound earlier keep working with capture_logs.
        structlog.configure(**saved)


def test_report_upload_cli(cli_env: SimulatorThread,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """crawl, then report --upload: the object is the printed report; refusal is exit 1."""
    sim = cli_env
    assert main(["crawl"]) == 0
    capsys.readouterr()
    bucket = next(b.id for b in sim.fleet.query_buckets() if b.access == "private")
    code = main(["report", "--since", "1h", "--format", "json", "--upload",
                 f"{bucket}/audit/r.json", "--retention", "2w"])
    out, err = capsys.readouterr()
    assert code == 0, err
    stored = sim.objects.get(bucket, "audit/r.json")
    assert stored is not None
    assert stored.data == out.encode()
    assert stored.metadata is not None
    assert stored.metadata["retention"] == "2w"
    assert stored.metadata["window"] == json.loads(out)["window"]
    assert f"uploaded {bucket}/audit/r.json" in err
    assert "verified" in err
    assert "warning" not in err
    assert sim.key not in err

    # An object key is the user's text: a control sequence in it is printed escaped.
    assert main(["report", "--since", "1h", "--format", "json", "--upload",
                 f"{bucket}/audit/\x1b[2Jr.json"]) == 0
    err = capsys.readouterr().err
    assert f"uploaded {bucket}/audit/\\x1b[2Jr.json" in err
    assert "\x1b" not in err

    sim.fleet.add_bucket("bk_fresh")  # no crawl has seen it: allowed, with a warning
    assert main(["report", "--since", "1h", "--format", "csv", "--upload", "bk_fresh/r.csv"]) == 0
    out, err = capsys.readouterr()
    assert "warning: no bucket crawl of account default has seen bucket bk_fresh" in err
    fresh = sim.objects.get("bk_fresh", "r.csv")
    assert fresh is not None
    assert fresh.content_type == "text/csv"

    sim.set_bucket_access(bucket, "public")
    assert main(["crawl", "--kinds", "buckets"]) == 0
    capsys.readouterr()
    code = main(["report", "--since", "1h", "--upload", f"{bucket}/audit/r2.txt"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "refusing to upload evidence" in err
    assert sim.objects.get(bucket, "audit/r2.txt") is None
    assert main(["report", "--since", "1h", "--upload", "no-key"]) == 2
