"""The API key never leaks: not in logs, metrics, HTTP answers, reports, errors or files.

A recognisable key (a canary) is used for real crawls, a real ``serve`` and every report
format; then every byte the tool produced is searched for it: standard output and error,
log events, /metrics, /report and error answers (bodies and headers), exception text, and
every file written next to the database (the DuckDB file, any write-ahead log, spill or
temporary file, the Parquet export).
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from nexus_audit.api import ApiStats, CloudNexusClient, RateBudget, RetryPolicy
from nexus_audit.config import AccountConfig, Secret, load_settings
from nexus_audit.crawl.crawler import crawl_and_commit
from nexus_audit.domain.timeutil import SystemClock
from nexus_audit.history.store import Store
from nexus_audit.simulator import SimulatorConfig, SimulatorThread
from tests.serve_fixtures import StartServe, wait_until

REPO = Path(__file__).resolve().parents[1]
#: A key nobody could mistake for anything else; its parts are searched for too.
KEY = "nxk_live_CANARY_" + secrets.token_hex(16)
FRAGMENTS = (KEY, KEY[len("nxk_live_CANARY_"):], KEY[-16:])


def assert_no_key(blob: bytes | str, where: str) -> None:
    """Neither the key nor a telling part of it occurs in ``blob``."""
    data = blob.encode() if isinstance(blob, str) else blob
    for fragment in FRAGMENTS:
        assert fragment.encode() not in data, f"the key leaks into {where}"


def assert_no_key_in_files(root: Path, *, skip: Path | None = None) -> int:
    """No file under ``root`` (but ``skip``, the key file itself) holds the key; file count."""
    count = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if skip is not None and path == skip:
            continue
        assert_no_key(path.read_bytes(), str(path.relative_to(root)))
        count += 1
    return count


@pytest.fixture
def canary_sim() -> Iterator[SimulatorThread]:
    """A simulator that accepts only the canary key."""
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,), instances=150, buckets=12,
                                         seed=5)) as sim:
        yield sim


def cli_env(sim: SimulatorThread, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment a user sets: the key in a file, the database in ``tmp_path``."""
    key_file = tmp_path / "secrets" / "cloudnexus.key"
    key_file.parent.mkdir(exist_ok=True)
    key_file.write_text(KEY + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update({"NEXUS_API_URL": sim.url, "NEXUS_API_KEY_FILE": str(key_file),
                "NEXUS_AUDIT_DB": str(tmp_path / "work" / "audit.duckdb")})
    env.update(extra)
    return env


def run_cli(args: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m nexus_audit ARGS``, captured."""
    return subprocess.run([sys.executable, "-m", "nexus_audit", *args], env=dict(env), cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def test_crawls_reports_and_files_never_hold_the_key(canary_sim: SimulatorThread,
                                                     tmp_path: Path) -> None:
    """Crawl (good, and failing on a revoked key), report in every format and export: no
    output, error line or file written holds the key."""
    env = cli_env(canary_sim, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    outputs: list[tuple[str, subprocess.CompletedProcess[str]]] = []

    first = run_cli(["crawl"], env, work)
    assert first.returncode == 0, first.stderr
    outputs.append(("crawl", first))
    canary_sim.faults.script("revoke_key", path="/v2/instances", after=1)
    revoked = run_cli(["crawl"], env, work)
    assert revoked.returncode == 1
    assert "invalid or expired" in revoked.stderr
    outputs.append(("crawl with the key revoked", revoked))
    canary_sim.add_key(KEY)
    canary_sim.faults.script("500", path="/v2/buckets", times=50)
    failing = run_cli(["crawl", "--kinds", "buckets"], env, work)
    assert failing.returncode == 1
    outputs.append(("crawl failing on 500s", failing))
    canary_sim.faults.clear()
    assert run_cli(["crawl"], env, work).returncode == 0

    for fmt in ("table", "json", "markdown", "csv"):
        report = run_cli(["report", "--since", "1d", "--format", fmt], env, work)
        assert report.returncode == 0, report.stderr
        outputs.append((f"report --format {fmt}", report))
    exported = run_cli(["export", "--since", "1d", "--to", str(work / "export")], env, work)
    assert exported.returncode == 0, exported.stderr
    outputs.append(("export", exported))
    bad = run_cli(["report", "--since", "soon"], env, work)
    assert bad.returncode == 2
    outputs.append(("report with a bad flag", bad))

    for what, result in outputs:
        assert_no_key(result.stdout, f"the standard output of {what}")
        assert_no_key(result.stderr, f"the standard error of {what}")
    written = assert_no_key_in_files(tmp_path, skip=tmp_path / "secrets" / "cloudnexus.key")
    assert written >= 2  # the database and the export at least
    with Store(work / "audit.duckdb").read() as con:
        statuses = [r[0] for r in con.execute("SELECT status FROM crawls ORDER BY crawl_id")
                    .fetchall()]
    assert statuses == ["succeeded", "failed", "failed", "succeeded"]


def test_serve_answers_logs_and_database_never_hold_the_key(
        canary_sim: SimulatorThread, start_serve: StartServe, tmp_path: Path) -> None:
    """A serve process that crawls, fails on a revoked key and answers every endpoint (and
    errors) never shows the key in a body, a header, a log line or its database."""
    serve = start_serve(canary_sim, env={"NEXUS_API_KEY": KEY})
    serve.wait_ready()
    canary_sim.revoke_key(KEY)

    def failed_crawl_shown() -> bool | None:
        body = serve.get("/metrics")[2].decode()
        return True if 'nexus_audit_crawl_success{account="default",kind="buckets"} 0.0' \
            in body else None

    wait_until(failed_crawl_shown, timeout=20, what="a failed bucket crawl in /metrics")
    answers = [serve.get(path, headers) for path, headers in [
        ("/metrics", {}),
        ("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}),
        ("/report", {}), ("/report?since=1h&account=default", {}),
        ("/report?since=yesterday", {}), ("/report?account=nobody", {}),
        ("/readyz", {}), ("/healthz", {}), ("/nope", {}),
    ]]
    assert serve.stop() == 0
    for status, headers, body in answers:
        assert_no_key(body, f"a {status} answer's body")
        assert_no_key(repr(headers), f"a {status} answer's headers")
    assert serve.events_named("api.error"), "the 401 was logged"
    assert_no_key(serve.log_text(), "serve's log")
    assert_no_key_in_files(tmp_path)


async def test_exception_text_and_log_events_never_hold_the_key(
        canary_sim: SimulatorThread, tmp_path: Path) -> None:
    """In process: every log event, the failure summaries and the objects' reprs of crawls
    through 500s, resets, broken bodies and a revoked key are free of the key."""
    account = AccountConfig(name="acme", api_url=canary_sim.url, api_key=Secret(KEY))
    store = Store(tmp_path / "audit.duckdb")
    store.migrate()
    texts: list[str] = []
    async with aiohttp.ClientSession() as session:
        client = CloudNexusClient(account, session,
                                  RateBudget(60_000, clock=SystemClock()), stats=ApiStats(),
                                  timeout=2.0, clock=SystemClock(), rng=random.Random(1),
                                  policy=RetryPolicy(base_delay=0.001, max_delay=0.01,
                                                     max_retries=2))
        texts += [repr(client), repr(account), repr(store), str(account.api_key)]
        faults = [("500", 10), ("reset", 10), ("truncated_json", 10), ("missing_id", 1),
                  ("403", 1), ("revoke_key", 1)]
        with capture_logs() as events:
            for kind, times in faults:
                canary_sim.faults.script(kind, path="/v2/instances", times=times)
                summary = await crawl_and_commit(account, store, client=client,
                                                 clock=SystemClock())
                canary_sim.faults.clear()
                assert summary.status == "failed", kind
                texts += [str(summary.error), repr(summary)]
    texts += [repr(event) for event in events]
    assert any(e["event"] == "api.error" for e in events)
    for text in texts:
        assert_no_key(text, "exception text or a log event")
    settings = load_settings({"NEXUS_API_KEY": KEY})
    assert_no_key(repr(settings), "the settings' repr")
    assert_no_key_in_files(tmp_path)


@pytest.mark.parametrize("variable", ["NEXUS_API_KEY_FILE", "NEXUS_AUDIT_BEARER_TOKEN_FILE"])
def test_a_key_given_where_a_file_name_belongs_is_not_echoed(tmp_path: Path,
                                                             variable: str) -> None:
    """Setting NEXUS_API_KEY_FILE (or a token file) to the key itself, a common slip, fails
    with one line that does not repeat the value: it is the secret, not a path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update({"NEXUS_AUDIT_DB": str(tmp_path / "audit.duckdb"), variable: KEY})
    if variable != "NEXUS_API_KEY_FILE":
        env["NEXUS_API_KEY"] = "nxk_test_other_key"
    for command in (["crawl"], ["report"], ["serve", "--listen", "127.0.0.1:0"]):
        result = run_cli(command, env, tmp_path)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2  # the error, maybe a hint
        assert "Traceback" not in result.stderr
        assert_no_key(result.stdout + result.stderr, f"{command[0]}'s error")
    assert not (tmp_path / "audit.duckdb").exists()
