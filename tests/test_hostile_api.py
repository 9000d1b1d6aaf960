"""The real client and crawler against a hostile CloudNexus (tests/hostile_api.py).

Each class of misbehaviour fails the crawl with its own code, is recorded as a failed
crawl in a real store, and commits nothing; never a wrong answer reported as success,
never a silent stall, never the key in what is stored, exported or printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
import structlog
from structlog.testing import capture_logs

from nexus_audit.api import ApiStats, CloudNexusClient, RateBudget
from nexus_audit.api.retry import RetryPolicy
from nexus_audit.cli import main
from nexus_audit.config import AccountConfig, Secret
from nexus_audit.crawl.crawler import crawl_and_commit
from nexus_audit.domain.model import KINDS, CrawlSummary, Kind
from nexus_audit.domain.timeutil import FakeClock, Window
from nexus_audit.domain.tolerance import DEFAULT_TOTAL_TOLERANCE, TotalTolerance
from nexus_audit.history.parquet import export_history
from nexus_audit.history.store import Store
from tests.hostile_api import HOSTILE_KEY, Answer, HostileApi, MakeHostile, page

FAST = RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.01)
MiB = 1024 * 1024


def inst(n: int, region: str = "eu-west-1", **fields: Any) -> dict[str, Any]:
    """One API instance item (``fields`` override)."""
    return {"id": f"inst_{n:05d}", "name": f"web-{n}", "status": "running", "region": region,
            "cpu": 2, "memory_gb": 4, "created_at": "2025-01-01T00:00:00Z", **fields}


def bkt(ident: str, access: str = "private") -> dict[str, Any]:
    """One API bucket item."""
    return {"id": ident, "region": "eu-west-1", "size_bytes": 10, "access": access}


async def crawl(api: HostileApi, tmp_path: Path, *, kinds: Sequence[Kind] = KINDS,
                clock: FakeClock | None = None, max_response_bytes: int = 64 * MiB,
                max_wait: float = 120.0, request_timeout: float = 5.0,
                tolerance: TotalTolerance = DEFAULT_TOTAL_TOLERANCE,
                store: Store | None = None) -> tuple[CrawlSummary, Store]:
    """One crawl_and_commit against ``api`` into a store in ``tmp_path``."""
    if store is None:
        store = await asyncio.to_thread(_new_store, tmp_path)
    account = AccountConfig(name="acme", api_url=api.url, api_key=Secret(HOSTILE_KEY))
    clock = clock or FakeClock()
    async with aiohttp.ClientSession() as session:
        budget = RateBudget(6000, clock=clock, max_wait=max_wait)
        client = CloudNexusClient(account, session, budget, stats=ApiStats(),
                                  timeout=request_timeout,
                                  clock=clock, policy=FAST,
                                  max_response_bytes=max_response_bytes)
        summary = await crawl_and_commit(account, store, client=client, kinds=kinds,
                                         clock=clock, tolerance=tolerance)
    return summary, store


def _new_store(directory: Path) -> Store:
    directory.mkdir(parents=True, exist_ok=True)
    store = Store(directory / "h.duckdb")
    store.migrate()
    return store


def crawl_rows(store: Store) -> list[tuple[Any, ...]]:
    """Every crawl row: status, error_code, error, request_id, total_mismatch."""
    with store.read() as con:
        return con.execute("SELECT status, error_code, error, request_id, total_mismatch "
                           "FROM crawls ORDER BY crawl_id").fetchall()


def versions(store: Store, kind: Kind) -> int:
    """Rows of ``kind`` in the history."""
    sql = {"instances": "SELECT count(*) FROM instance_versions",
           "buckets": "SELECT count(*) FROM bucket_versions"}[kind]
    with store.read() as con:
        row = con.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def assert_failed(summary: CrawlSummary, store: Store, code: str) -> str:
    """The crawl failed with ``code``, was recorded so, and committed nothing; its error."""
    assert summary.status == "failed", summary
    assert summary.error_code == code, summary.error
    [(status, stored_code, error, _, _)] = crawl_rows(store)
    assert (status, stored_code) == ("failed", code)
    assert versions(store, "instances") == 0
    assert versions(store, "buckets") == 0
    assert isinstance(error, str)
    return error


# -- conflicting duplicates ------------------------------------------------------------------


async def test_conflicting_duplicate_in_one_answer_fails(hostile_api: MakeHostile,
                                                         tmp_path: Path) -> None:
    """One /buckets answer listing bkt-1 private and later public-read fails
    DUPLICATE_CONFLICT naming the id and the request id; nothing is committed."""
    api = await hostile_api()
    api.script("/buckets", [Answer(payload={"buckets": [bkt("bkt-1"), bkt("bkt-2"),
                                                        bkt("bkt-1", "public-read")]},
                                   headers={"X-Request-Id": "req-b-7"})])
    summary, store = await crawl(api, tmp_path, kinds=("buckets",))
    error = assert_failed(summary, store, "DUPLICATE_CONFLICT")
    assert "'bkt-1'" in error
    assert "req-b-7 and req-b-7" in error


async def test_conflicting_duplicate_across_pages_names_both_answers(
        hostile_api: MakeHostile, tmp_path: Path) -> None:
    """An instance on page 1 and again, changed, on page 2 fails DUPLICATE_CONFLICT with the
    request ids of both pages; the stored request id is the later answer's."""
    api = await hostile_api()
    api.pages("/instances", "instances", [[inst(1), inst(2)], [inst(2, cpu=64), inst(3)]],
              totals=3)
    summary, store = await crawl(api, tmp_path, kinds=("instances",))
    error = assert_failed(summary, store, "DUPLICATE_CONFLICT")
    assert "'inst_00002'" in error
    assert "req-instances-0 and req-instances-1" in error
    assert summary.request_id == "req-instances-1"


async def test_identical_duplicates_are_still_dropped(hostile_api: MakeHostile,
                                                      tmp_path: Path) -> None:
    """The same record on two pages (pages shifting under churn) is kept once."""
    api = await hostile_api()
    api.pages("/instances", "instances", [[inst(1), inst(2)], [inst(2), inst(3)]], totals=3)
    summary, store = await crawl(api, tmp_path, kinds=("instances",))
    assert summary.status == "succeeded", summary.error
    assert summary.instances == 3
    assert versions(store, "instances") == 3


async def test_fallback_walk_supersedes_with_a_note(hostile_api: MakeHostile,
                                                    tmp_path: Path) -> None:
    """A record the fan-out's unfiltered fallback sees changed after the region walks is a
    later observation: its copy is kept, and the crawl says so (note and warning)."""
    api = await hostile_api()
    fleet = [inst(1, "eu-west-1"), inst(2, "us-east-1")]
    state = {"phase": "first"}

    def instances(query: Mapping[str, str]) -> Answer:
        region = query.get("region")
        items = [i for i in fleet if region in (None, i["region"])]
        if state["phase"] == "second":
            items = items + ([inst(3, "ap-south-1")] if region is None else [])
            if region is None and query.get("limit") != "1":
                # The unfiltered walk, after the region walks: inst 1 was stopped meanwhile.
                items = [inst(1, "eu-west-1", status="stopped"), *items[1:]]
        limit = int(query["limit"])
        return page("instances", items[:limit], cursor=None, total=len(items),
                    request_id=f"req-{region}")

    api.on("/instances", instances)
    first, store = await crawl(api, tmp_path, kinds=("instances",))
    assert first.status == "succeeded", first.error
    state["phase"] = "second"
    clock = FakeClock()
    clock.advance(3600)
    with capture_logs() as logs:
        second, _ = await crawl(api, tmp_path, kinds=("instances",), store=store, clock=clock)
    assert second.status == "succeeded", second.error
    assert second.instances == 3
    assert second.total_mismatch is not None
    assert "unfiltered walk's (later) copies kept" in second.total_mismatch
    assert any(e["event"] == "crawl.superseded" for e in logs)
    with store.read() as con:
        status = con.execute("SELECT status FROM instance_versions WHERE id = 'inst_00001' "
                             "AND until_crawl IS NULL").fetchall()
    assert status == [("stopped",)]


# -- truncated pagination --------------------------------------------------------------------


async def test_truncated_pages_fail_total_mismatch(hostile_api: MakeHostile,
                                                   tmp_path: Path) -> None:
    """300 announced on the first and the last page, 100 served: TOTAL_MISMATCH, and
    nothing is committed (history would read 200 instances as removed)."""
    api = await hostile_api()
    api.pages("/instances", "instances", [[inst(n) for n in range(100)], []], totals=300)
    summary, store = await crawl(api, tmp_path, kinds=("instances",))
    error = assert_failed(summary, store, "TOTAL_MISMATCH")
    assert "collected 100, API total 300" in error


async def test_churn_within_the_tolerance_keeps_the_note(hostile_api: MakeHostile,
                                                         tmp_path: Path) -> None:
    """Off by no more than the tolerance (max(10, 1%)): the crawl succeeds with a note;
    a tighter configured tolerance fails the same answers."""
    api = await hostile_api()
    api.pages("/instances", "instances", [[inst(n) for n in range(100)], [inst(100)]],
              totals=110)
    summary, _ = await crawl(api, tmp_path, kinds=("instances",))
    assert summary.status == "succeeded", summary.error
    assert summary.total_mismatch == "instances: collected 101, API total 110"
    strict, _ = await crawl(api, tmp_path / "strict", kinds=("instances",),
                            tolerance=TotalTolerance(records=5, percent=1.0))
    assert strict.error_code == "TOTAL_MISMATCH"



@pytest.mark.parametrize(("totals", "kind"), [
    ([300, None], "instances"),   # the last page leaves its total out
    ([None, 300], "instances"),   # the first page does
    ([300, 290], "instances"),    # they differ, and both are far above what came
    ([300, None], "buckets"),
])
async def test_truncation_with_one_total_or_two_close_ones_fails(
        hostile_api: MakeHostile, tmp_path: Path, totals: list[int | None],
        kind: Kind) -> None:
    """100 records served where the API announced about 300 fails TOTAL_MISMATCH even when
    one page leaves ``pagination.total`` out or the two totals differ a little: churn
    between 300 and 290 cannot explain 100."""
    api = await hostile_api()
    item = inst if kind == "instances" else (lambda n: bkt(f"bkt-{n}"))
    api.pages(f"/{kind}", kind, [[item(n) for n in range(100)], []], totals=totals)
    summary, store = await crawl(api, tmp_path, kinds=(kind,))
    error = assert_failed(summary, store, "TOTAL_MISMATCH")
    assert "collected 100" in error


# -- non-finite and out-of-range numbers -------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"memory_gb": float("nan")},
    {"memory_gb": float("inf")},
    {"memory_gb": float("-inf")},
    {"cpu": 2**31},
    {"memory_gb": 1e300},
    {"score": float("nan")},
])
async def test_non_finite_or_out_of_range_numbers_are_invalid(
        hostile_api: MakeHostile, tmp_path: Path, fields: dict[str, Any]) -> None:
    """NaN/Infinity anywhere in a record and counts past their column's range fail the
    crawl INVALID_RECORD, with the answer's request id."""
    api = await hostile_api()
    api.pages("/instances", "instances", [[inst(1), inst(2, **fields)]])
    summary, store = await crawl(api, tmp_path, kinds=("instances",))
    error = assert_failed(summary, store, "INVALID_RECORD")
    assert "inst_00002" in error
    assert summary.request_id == "req-instances-0"


@pytest.mark.parametrize("fields", [
    {"name": "web-\ud800"},
    {"region": "\udfffeu"},
    {"tags": {"team": "a\udc00"}},
    {"tags": {"\ud800": "x"}},
    {"image": "img-\ud800"},
    {"id": "inst_\ud800"},
])
async def test_lone_surrogates_are_invalid_records(hostile_api: MakeHostile, tmp_path: Path,
                                                   fields: dict[str, Any]) -> None:
    """A ``\\ud800`` escape in any text of a record (a JSON string, but no Unicode text)
    fails the crawl INVALID_RECORD with the request id, escaped in the stored error: not
    a STORE failure from DuckDB's UTF-8 conversion."""
    api = await hostile_api()
    api.script("/instances", [Answer(body=json.dumps(  # ensure_ascii: the escape as sent
        {"instances": [inst(1), inst(2, **fields)], "pagination": {"next_cursor": None}}
    ).encode(), headers={"X-Request-Id": "req-sur"})])
    summary, store = await crawl(api, tmp_path, kinds=("instances",))
    error = assert_failed(summary, store, "INVALID_RECORD")
    assert "lone surrogate" in error
    assert summary.request_id == "req-sur"
    error.encode("utf-8")  # what was stored is text


async def test_bucket_size_past_bigint_is_invalid(hostile_api: MakeHostile,
                                                  tmp_path: Path) -> None:
    """A size_bytes past BIGINT is an invalid record, not a store failure."""
    api = await hostile_api()
    api.script("/buckets", [Answer(payload={"buckets": [
        {**bkt("bkt-1"), "size_bytes": 2**63}]})])
    summary, store = await crawl(api, tmp_path, kinds=("buckets",))
    assert_failed(summary, store, "INVALID_RECORD")


# -- unbounded waits ----------------------------------------------------------------------------


async def test_reset_in_milliseconds_fails_rate_limited(hostile_api: MakeHostile,
                                                        tmp_path: Path) -> None:
    """Remaining 0 with X-RateLimit-Reset in epoch milliseconds fails RATE_LIMITED naming
    the header value, instead of waiting for decades."""
    api = await hostile_api()
    clock = FakeClock()
    reset = int(clock.now().timestamp() * 1000)
    api.pages("/instances", "instances", [[inst(1)], [inst(2)]],
              headers={"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0",
                       "X-RateLimit-Reset": str(reset)})
    start = clock.monotonic()
    with capture_logs() as logs:
        summary, store = await crawl(api, tmp_path, kinds=("instances",), clock=clock)
    error = assert_failed(summary, store, "RATE_LIMITED")
    assert f"X-RateLimit-Reset: {reset}" in error
    assert clock.monotonic() - start < 120
    assert any(e["event"] == "budget.refused" and e["log_level"] == "warning" for e in logs)


async def test_long_retry_after_fails_rate_limited(hostile_api: MakeHostile,
                                                   tmp_path: Path) -> None:
    """A 429 whose Retry-After says more than the cap fails RATE_LIMITED at once, naming
    the header; one within the cap is waited, with a warning."""
    api = await hostile_api()
    clock = FakeClock()
    limited = Answer(status=429, payload={"error": {"message": "slow down"}},
                     headers={"Retry-After": "500"})
    api.script("/buckets", [limited, Answer(payload={"buckets": [bkt("bkt-1")]})])
    start = clock.monotonic()
    summary, store = await crawl(api, tmp_path, kinds=("buckets",), clock=clock)
    error = assert_failed(summary, store, "RATE_LIMITED")
    assert "Retry-After: 500" in error
    assert clock.monotonic() - start < 120

    api.script("/buckets", [Answer(status=429, headers={"Retry-After": "30"}),
                            Answer(payload={"buckets": [bkt("bkt-1")]})])
    with capture_logs() as logs:
        ok, _ = await crawl(api, tmp_path / "ok", kinds=("buckets",), clock=clock)
    assert ok.status == "succeeded", ok.error
    assert any(e["event"] == "api.rate_limited" and e["log_level"] == "warning"
               for e in logs)
    assert any(e["event"] == "budget.long_wait" and e["cause"] == "429" for e in logs)


# -- hostile sizes ----------------------------------------------------------------------------


async def test_endless_body_fails_response_too_large(hostile_api: MakeHostile,
                                                     tmp_path: Path) -> None:
    """A body that never ends is abandoned at the byte cap (RESPONSE_TOO_LARGE); the
    client hangs up, so the server could stream only a little past the cap."""
    api = await hostile_api()

    def endless() -> Iterator[bytes]:
        yield b'{"instances": ['
        chunk = b'{"id": "inst_1", "name": "x"},' * 2000
        # Bounded at 256 MiB only to spare the test machine if the client never hangs up.
        for _ in range(256 * MiB // len(chunk)):
            yield chunk

    api.script("/instances", [Answer(stream=endless, headers={"X-Request-Id": "req-big"})])
    summary, store = await asyncio.wait_for(
        crawl(api, tmp_path, kinds=("instances",), max_response_bytes=MiB, request_timeout=3.0), 30)
    error = assert_failed(summary, store, "RESPONSE_TOO_LARGE")
    assert "1,048,576-byte cap" in error
    assert summary.request_id == "req-big"
    assert api.streamed < 32 * MiB


async def test_declared_length_past_the_cap_fails_at_once(hostile_api: MakeHostile,
                                                          tmp_path: Path) -> None:
    """A Content-Length past the cap fails before the body is read."""
    api = await hostile_api()
    api.script("/buckets", [Answer(body=b" " * (2 * MiB))])
    summary, store = await crawl(api, tmp_path, kinds=("buckets",), max_response_bytes=MiB)
    assert "Content-Length" in assert_failed(summary, store, "RESPONSE_TOO_LARGE")


async def test_page_over_the_limit_fails(hostile_api: MakeHostile, tmp_path: Path) -> None:
    """A page with more items than the limit asked (one id repeated 5,000 times) fails
    PAGE_TOO_LARGE instead of passing as identical duplicates."""
    api = await hostile_api()
    api.pages("/instances", "instances", [[inst(1)] * 5000], totals=1)
    summary, store = await crawl(api, tmp_path, kinds=("instances",))
    assert "5,000 items" in assert_failed(summary, store, "PAGE_TOO_LARGE")


async def test_endless_fresh_cursors_fail_walk_too_long(hostile_api: MakeHostile,
                                                        tmp_path: Path) -> None:
    """Empty pages with ever new cursors stop after the pages the total allows
    (WALK_TOO_LONG), instead of running on at the budget's rate."""
    api = await hostile_api()

    def empty(query: Mapping[str, str]) -> Answer:
        n = int(query.get("cursor", "c0")[1:])
        return page("instances", [], cursor=f"c{n + 1}", total=0, request_id=f"req-{n}")

    api.on("/instances", empty)
    summary, store = await asyncio.wait_for(crawl(api, tmp_path, kinds=("instances",)), 30)
    assert "10 pages" in assert_failed(summary, store, "WALK_TOO_LONG")
    assert len(api.requests) == 10


# -- the key echoed back ------------------------------------------------------------------------


def _no_key(values: Sequence[Any]) -> None:
    """None of ``values`` holds the key or a control character a terminal would act on."""
    leaked = [str(v) for v in values
              if HOSTILE_KEY in str(v) or any(ch in str(v) for ch in _CONTROLS)]
    assert leaked == []


_CONTROLS = "\x1b\x07\r\n\x00\x9b\u202e"


async def test_echoed_key_never_stored_or_exported(hostile_api: MakeHostile,
                                                   tmp_path: Path) -> None:
    """A key echoed in X-Request-Id and the error body (with control characters) reaches
    neither the crawls table nor the Parquet export; request ids stay bounded."""
    api = await hostile_api()
    # aiohttp refuses C0 controls in headers it sends; C1 ones (CSI) and bidi overrides pass.
    echo = f"req-{HOSTILE_KEY}\u009b2J\u202e" + "x" * 500
    api.script("/instances", [Answer(status=400, headers={"X-Request-Id": echo},
                                     payload={"error": {
                                         "code": f"BAD_{HOSTILE_KEY}",
                                         "message": f"key {HOSTILE_KEY}\r\n\x1b[2J rejected",
                                         "request_id": echo}})])
    api.pages("/buckets", "buckets", [[bkt("bkt-1"), {"id": "bkt-2"}]],
              headers={"X-Request-Id": echo})
    clock = FakeClock()
    summary, store = await crawl(api, tmp_path, clock=clock)
    assert summary.status == "failed"
    rows = crawl_rows(store)
    _no_key([v for row in rows for v in row])
    assert summary.request_id is not None
    assert len(summary.request_id) <= 128
    assert "[REDACTED]" in summary.request_id

    api.script("/instances", [Answer(payload={"instances": [inst(1), {"id": "i-bad"}],
                                              "pagination": {"next_cursor": None}},
                                     headers={"X-Request-Id": echo})])
    again, _ = await crawl(api, tmp_path, kinds=("instances",), store=store, clock=clock)
    assert again.error_code == "INVALID_RECORD"
    rows = crawl_rows(store)
    _no_key([v for row in rows for v in row])
    window = Window(clock.now() - timedelta(days=1), clock.now() + timedelta(minutes=1))
    out = tmp_path / "export"
    export_history(store, out, window)
    exported = duckdb.execute("SELECT * FROM read_parquet(?)",
                              [f"{out}/crawls/**/*.parquet"]).fetchall()
    assert len(exported) == 2
    _no_key([v for row in exported for v in row])


@pytest.fixture
def cli_env(hostile_thread: HostileApi, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileApi]:
    """The environment pointing nexus-audit at the hostile server (structlog restored)."""
    saved = structlog.get_config()
    for name in ("NEXUS_API_KEY_FILE", "NEXUS_AUDIT_CONFIG", "NEXUS_AUDIT_PRICING",
                 "NEXUS_AUDIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEXUS_API_KEY", HOSTILE_KEY)
    monkeypatch.setenv("NEXUS_API_URL", hostile_thread.url)
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(tmp_path / "h.duckdb"))
    try:
        yield hostile_thread
    finally:
        structlog.configure(**saved)


def test_crawl_cli_never_prints_the_key(cli_env: HostileApi,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`nexus-audit crawl` against an API echoing the key: exit 1, one line per failure,
    and neither the key nor its control characters on stderr."""
    echo = f"req-{HOSTILE_KEY}\u009b31m"
    cli_env.script("/instances", [Answer(status=403, headers={"X-Request-Id": echo},
                                         payload={"error": {
                                             "message": f"no {HOSTILE_KEY}\x1b[2J"}})])
    cli_env.script("/buckets", [Answer(payload={"buckets": [bkt("bkt-1")]},
                                       headers={"X-Request-Id": echo})])
    assert main(["crawl"]) == 1
    out, err = capsys.readouterr()
    assert HOSTILE_KEY not in out + err
    assert not any(ch in out + err for ch in "\x1b\x9b")
    assert "nexus-audit: error: account default:" in err


def test_crawl_process_fails_rate_limited_instead_of_stalling(
        hostile_thread: HostileApi, tmp_path: Path) -> None:
    """A `nexus-audit crawl` process told Remaining 0 until a reset in epoch milliseconds
    exits 1 promptly with the reason, instead of waiting forever."""
    reset = str(int(time.time() * 1000))
    hostile_thread.pages("/instances", "instances", [[inst(1)], [inst(2)]],
                         headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
    hostile_thread.pages("/buckets", "buckets", [[bkt("bkt-1")]])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NEXUS_")}
    env.update(NEXUS_API_KEY=HOSTILE_KEY, NEXUS_API_URL=hostile_thread.url,
               NEXUS_AUDIT_DB=str(tmp_path / "h.duckdb"))
    done = subprocess.run([sys.executable, "-m", "nexus_audit", "crawl"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert f"X-RateLimit-Reset: {reset}" in done.stderr
    assert "budget.refused" in done.stderr
    store = Store(tmp_path / "h.duckdb")
    assert [r[:2] for r in crawl_rows(store)] == [("failed", "RATE_LIMITED")]


# -- the upload target --------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["../instances", "./instances", "bk/../instances",
                                    "bk/a/./b", "bk//k", "bk/a//b", "../k"])
def test_upload_target_with_dot_segments_is_refused(cli_env: HostileApi, target: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--upload with a dot segment or an empty part is a usage error (exit 2, one line),
    and nothing reaches the API (``../instances`` became ``PUT /v2/instances``)."""
    assert main(["report", "--since", "1h", "--upload", target]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1
    assert err.startswith("nexus-audit: error: --upload:")
    assert cli_env.requests == []


async def test_absurd_total_does_not_lift_the_page_cap(hostile_api: MakeHostile,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty pages with fresh cursors under an absurd ``pagination.total`` (10**18) still
    stop at the ceiling a chain without a total gets (WALK_TOO_LONG), never run on."""
    from nexus_audit.api import pagination
    monkeypatch.setattr(pagination, "MAX_PAGES_WITHOUT_TOTAL", 25)
    api = await hostile_api()

    def empty(query: Mapping[str, str]) -> Answer:
        n = int(query.get("cursor", "c0")[1:])
        return page("instances", [], cursor=f"c{n + 1}", total=10**18, request_id=f"req-{n}")

    api.on("/instances", empty)
    summary, store = await asyncio.wait_for(crawl(api, tmp_path, kinds=("instances",)), 30)
    assert "25 pages" in assert_failed(summary, store, "WALK_TOO_LONG")
    assert len(api.requests) == 25


# -- output injection through the report ---------------------------------------------------


def test_markdown_inventory_line_escapes_status_and_region(
        cli_env: HostileApi, capsys: pytest.CaptureFixture[str]) -> None:
    """An instance status and region carrying raw HTML reach the Markdown report's
    inventory line escaped (no live ``<img onerror>``), like every table cell."""
    cli_env.pages("/instances", "instances",
                  [[inst(1, status="<img src=x onerror=alert(1)>", region="<b>r</b>")]])
    cli_env.pages("/buckets", "buckets", [[bkt("bkt-1")]])
    assert main(["crawl"]) == 0
    capsys.readouterr()
    assert main(["report", "--since", "1h", "--format", "markdown"]) == 0
    out, _ = capsys.readouterr()
    [line] = [ln for ln in out.splitlines() if ln.startswith("- Instances:")]
    assert "<img" not in line, line
    assert "<b>" not in line, line
    assert "&lt;img src=x onerror=alert(1)&gt;" in line


# -- bad input on the command line -------------------------------------------------------------


@pytest.mark.parametrize("flags", [
    ["--since", "0001-01-01T00:00:00+23:59"],
    ["--since", "1h", "--until", "9999-12-31T23:59:59-23:59"],
    ["--since", "0001-01-01T00:00:00Z"],
    ["--since", "0001-01-02T00:00:00Z", "--stale-after", "5200w"],
])
def test_report_window_out_of_datetime_range_is_one_line(
        cli_env: HostileApi, flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A window end whose UTC form falls outside Python's dates is a one-line error
    (exit 1 or 2), never an OverflowError traceback."""
    cli_env.pages("/instances", "instances", [[inst(1)]])
    cli_env.pages("/buckets", "buckets", [[bkt("bkt-1")]])
    assert main(["crawl"]) == 0
    capsys.readouterr()
    assert main(["report", *flags]) in (0, 1, 2)
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "OverflowError" not in err
    assert err.count("\n") <= 1, err


async def test_key_echoed_in_records_is_never_stored(hostile_api: MakeHostile,
                                                     tmp_path: Path) -> None:
    """An API echoing the key inside records (a name, a tag, an unmodelled field, a
    bucket id) gets it redacted before anything is stored: no inventory row holds it."""
    api = await hostile_api()
    api.pages("/instances", "instances",
              [[inst(1, name=f"n-{HOSTILE_KEY}", tags={"k": HOSTILE_KEY}, note=HOSTILE_KEY)]])
    api.pages("/buckets", "buckets", [[bkt(f"b-{HOSTILE_KEY}", "public")]])
    summary, store = await crawl(api, tmp_path)
    assert summary.status == "succeeded", summary.error
    with store.read() as con:
        rows = (con.execute("SELECT * FROM instance_versions").fetchall()
                + con.execute("SELECT * FROM bucket_versions").fetchall())
    assert len(rows) == 2
    assert [r for r in rows if HOSTILE_KEY in str(r)] == []
    assert any("[REDACTED]" in str(r) for r in rows)


async def test_deeply_nested_body_fails_closed(hostile_api: MakeHostile,
                                               tmp_path: Path) -> None:
    """A 2xx body nested deeper than Python's parser recurses (a JSON bomb of brackets)
    fails the crawl with a named code and is recorded, never a RecursionError escaping."""
    api = await hostile_api()
    depth = 200_000
    api.script("/instances", [Answer(body=b'{"instances":' + b"[" * depth + b"]" * depth
                                     + b',"pagination":{"next_cursor":null}}')])
    summary, store = await crawl(api, tmp_path, kinds=("instances",))
    assert summary.status == "failed"
    assert summary.error_code is not None
    [(status, code, _, _, _)] = crawl_rows(store)
    assert (status, code) == ("failed", summary.error_code)


@pytest.mark.parametrize("headers", [
    {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1" + "0" * 400},
    {"X-RateLimit-Remaining": "-" + "9" * 400, "X-RateLimit-Reset": "1" + "0" * 400},
    {"X-RateLimit-Limit": "9" * 400, "X-RateLimit-Remaining": "9" * 400},
])
async def test_absurd_rate_limit_headers_never_crash(hostile_api: MakeHostile,
                                                     tmp_path: Path,
                                                     headers: dict[str, str]) -> None:
    """Rate-limit headers with 400-digit numbers either are ignored or fail the crawl
    with a named code; they never escape as an OverflowError."""
    api = await hostile_api()
    api.pages("/instances", "instances", [[inst(1)]], headers=headers)
    summary, store = await asyncio.wait_for(crawl(api, tmp_path, kinds=("instances",)), 30)
    assert summary.status == "succeeded" or summary.error_code == "RATE_LIMITED", summary
    assert len(crawl_rows(store)) == 1


async def test_repeated_key_with_other_value_in_a_record_fails(hostile_api: MakeHostile,
                                                               tmp_path: Path) -> None:
    """A bucket object naming ``access`` twice (``public-read``, then ``private``) is a
    contradiction, like a conflicting duplicate id: the crawl fails PROTOCOL and
    commits nothing, instead of Python's parser silently keeping the last value."""
    api = await hostile_api()
    api.script("/buckets", [Answer(body=(
        b'{"buckets":[{"id":"bkt-1","region":"eu-west-1","size_bytes":10,'
        b'"access":"public-read","access":"private"}]}'),
        headers={"X-Request-Id": "req-dup"})])
    summary, store = await crawl(api, tmp_path, kinds=("buckets",))
    error = assert_failed(summary, store, "PROTOCOL")
    assert "'access'" in error


async def test_a_region_per_instance_does_not_multiply_the_requests(
        hostile_api: MakeHostile, tmp_path: Path) -> None:
    """An API that gives each of 300 instances its own region does not make the next
    crawl walk 300 region chains (300 requests at the budget's rate instead of 3)."""
    api = await hostile_api()
    fleet = [inst(n, region=f"r-{n}") for n in range(300)]
    api.pages("/instances", "instances", [fleet[:100], fleet[100:200], fleet[200:]])
    first, store = await crawl(api, tmp_path, kinds=("instances",))
    assert first.status == "succeeded", first.error
    api.requests.clear()
    second, _ = await crawl(api, tmp_path, kinds=("instances",), store=store,
                            clock=FakeClock(first.finished_at + timedelta(hours=1)))
    assert second.status == "succeeded", second.error
    assert second.instances == 300
    assert len(api.requests) <= 10, len(api.requests)


def test_invalid_record_message_is_bounded_at_the_source() -> None:
    """A wrong-typed field holding megabytes (a list of a million numbers as ``name``)
    gives an INVALID_RECORD message of bounded length, so cleaning it for the store and
    the log never walks megabytes character by character."""
    from nexus_audit.domain.model import InvalidRecordError, bucket_from_api, instance_from_api
    huge = list(range(1_000_000))
    for convert, item in ((instance_from_api, inst(1, name=huge)),
                          (instance_from_api, inst(1, plan=huge)),
                          (bucket_from_api, {**bkt("b"), "access": huge})):
        with pytest.raises(InvalidRecordError) as caught:
            convert(item)
        assert len(str(caught.value)) < 400


async def test_megabyte_ids_and_cursors_fail_closed(hostile_api: MakeHostile,
                                                    tmp_path: Path) -> None:
    """A bucket id of a megabyte (it would become a history row and a metric label) is an
    invalid record, and a megabyte cursor (every one is kept and sent back) a protocol
    error; nothing is committed either way."""
    api = await hostile_api()
    api.script("/buckets", [Answer(payload={"buckets": [bkt("b" * 1_000_000)]})])
    summary, store = await crawl(api, tmp_path / "ids", kinds=("buckets",))
    error = assert_failed(summary, store, "INVALID_RECORD")
    assert "1,000,000 characters" in error
    assert len(error) < 1000
    api = await hostile_api()
    api.script("/instances", [Answer(payload={
        "instances": [inst(1)], "pagination": {"next_cursor": "c" * 1_000_000, "total": 2}})])
    summary, store = await crawl(api, tmp_path / "cursors", kinds=("instances",))
    error = assert_failed(summary, store, "PROTOCOL")
    assert "next_cursor" in error
    assert len(error) < 1000
