"""Bad input from users: every flag, setting and /report parameter with bad values.

Each mistake must give one clear line (a hint line may follow), exit 2, no traceback, and
write nothing: a missing database is not created, an existing one keeps every byte and
its modification time, and no export directory appears. CLI runs are in-process (the
real ``main``), so the whole table runs in a second or two.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from nexus_audit.cli import main
from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import UsageError
from nexus_audit.history.store import Store
from nexus_audit.service.reports import StoreReports
from nexus_audit.service.web import AuthPolicy, Readiness, build_app, parse_report_query
from tests.test_store import crawl, inst

NOW = datetime.now(UTC).replace(microsecond=0)
KEY = "nxk_test_bad_input_key"


@dataclass
class Cli:
    """An isolated environment for in-process CLI runs: a home, a database path."""

    home: Path
    db: Path
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]

    def run(self, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Run ``nexus-audit ARGV`` with ``env`` added; (exit code, stdout, stderr)."""
        with self.monkeypatch.context() as patch:
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse's own exits
                code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    """No NEXUS_* variable but the database path; cwd in tmp_path; logging restored after."""
    for name in list(os.environ):
        if name.startswith("NEXUS_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    db = home / "audit.duckdb"
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(db))
    saved = structlog.get_config()
    try:
        yield Cli(home, db, monkeypatch, capsys)
    finally:
        structlog.configure(**saved)


def fingerprint(path: Path) -> tuple[str, int] | None:
    """The file's SHA-256 and modification time (ns), or None when it does not exist."""
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def seed_history(db: Path) -> None:
    """Two crawls of account ``acme`` (so account names and windows have something real)."""
    store = Store(db)
    store.migrate()
    crawl(store, NOW - timedelta(hours=2), instances=[inst("i-1")])
    crawl(store, NOW - timedelta(hours=1), instances=[inst("i-1"), inst("i-2")])
    # Let go of the file now: otherwise this process lets go a moment later, on a timer, and
    # that checkpoint would move the file's mtime in the middle of the test (seen under load).
    store.close()


def assert_one_clear_line(code: int, out: str, err: str, words: str) -> None:
    """Exit 2, nothing on stdout, one error line (and at most a hint) naming ``words``."""
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, err
    assert lines[0].startswith("nexus-audit: error: "), err
    assert len(lines) == 1 or lines[1].startswith("nexus-audit: hint: "), err
    assert "Traceback" not in err
    assert words.lower() in lines[0].lower(), err


# (argv, extra environment, words the error line must contain).
Case = tuple[tuple[str, ...], dict[str, str], str]
WITH_KEY = {"NEXUS_API_KEY": KEY, "NEXUS_API_URL": "http://127.0.0.1:9/v2"}  # never dialled

FLAG_CASES: list[Any] = [
    pytest.param(("crawl", "--kinds", "volumes"), WITH_KEY, "--kinds", id="crawl-kinds"),
    pytest.param(("crawl", "--kinds", ","), WITH_KEY, "--kinds", id="crawl-kinds-empty"),
    pytest.param(("crawl", "--account", "nobody"), WITH_KEY, "nobody", id="crawl-account"),
    pytest.param(("crawl", "--since", "1d"), WITH_KEY, "unrecognized", id="crawl-unknown-flag"),
    pytest.param(("crawl", "--account", ""), WITH_KEY, "account name", id="crawl-account-empty"),
    pytest.param(("report", "--account", " "), {}, "account name", id="report-account-empty"),
    pytest.param(("export", "--account", ""), {}, "account name", id="export-account-empty"),
    pytest.param(("crawl",), {}, "no CloudNexus account", id="crawl-missing-key"),
    pytest.param(("report", "--since", "yesterday"), {}, "--since", id="report-since-word"),
    pytest.param(("report", "--since", "0s"), {}, "--since", id="report-since-zero"),
    pytest.param(("report", "--since", "-5m"), {}, "since", id="report-since-negative"),
    pytest.param(("report", "--since", "1.5h"), {}, "--since", id="report-since-fraction"),
    pytest.param(("report", "--since", "99999999w"), {}, "--since", id="report-since-huge"),
    pytest.param(("report", "--since", "2026-13-01"), {}, "--since", id="report-since-month"),
    pytest.param(("report", "--until", "soon"), {}, "--until", id="report-until-word"),
    pytest.param(("report", "--until", "2999-01-01T00:00:00Z"), {}, "future",
                 id="report-until-future"),
    pytest.param(("report", "--since", "1h", "--until", "2h"), {}, "empty",
                 id="report-window-empty"),
    pytest.param(("report", "--format", "pdf"), {}, "--format", id="report-format"),
    pytest.param(("report", "--format", "ocsf"), {}, "policy", id="report-ocsf-no-policy"),
    pytest.param(("report", "--stale-after", "never"), {}, "--stale-after",
                 id="report-stale-after"),
    pytest.param(("report", "--stale-after", "0s"), {}, "--stale-after",
                 id="report-stale-after-zero"),
    pytest.param(("report", "--upload", "no-key-part"), {}, "--upload", id="report-upload"),
    pytest.param(("report", "--retention", "forever"), {}, "--retention",
                 id="report-retention"),
    pytest.param(("report", "--upload", "b/k", "--retention", "0s"), WITH_KEY, "--retention",
                 id="report-upload-retention"),
    pytest.param(("export", "--since", "lastweek"), {}, "--since", id="export-since"),
    pytest.param(("export", "--until", "2999-01-01"), {}, "future", id="export-until"),
    pytest.param(("serve", "--listen", "nohost"), WITH_KEY, "--listen", id="serve-listen"),
    pytest.param(("serve", "--listen", "127.0.0.1:99999"), WITH_KEY, "--listen",
                 id="serve-listen-port"),
    pytest.param(("serve", "--interval", "hourly"), WITH_KEY, "--interval",
                 id="serve-interval"),
    pytest.param(("serve", "--bucket-interval", "0s"), WITH_KEY, "--bucket-interval",
                 id="serve-bucket-interval"),
    pytest.param(("serve",), {}, "no CloudNexus account", id="serve-missing-key"),
    pytest.param(("serve",), {**WITH_KEY, "NEXUS_AUDIT_SHUTDOWN_GRACE": "later"},
                 "NEXUS_AUDIT_SHUTDOWN_GRACE", id="serve-grace"),
    pytest.param(("simulate", "--instances", "-1"), {}, "--instances", id="simulate-instances"),
    pytest.param(("simulate", "--port", "70000"), {}, "--port", id="simulate-port"),
    pytest.param(("simulate", "--latency", "abc"), {}, "--latency", id="simulate-latency"),
    pytest.param(("demo", "--interval", "soon"), {}, "--interval", id="demo-interval"),
    pytest.param(("demo", "--listen", "nohost"), {}, "listen", id="demo-listen"),
    # Bytes the command line could not decode (Python's lone surrogates): refused before
    # any work, not a traceback (--listen, --upload after the report was printed) or a
    # DuckDB conversion error (--to, after creating the directory).
    pytest.param(("serve", "--listen", "\udcff:0"), WITH_KEY, "--listen",
                 id="serve-listen-not-utf8"),
    pytest.param(("report", "--upload", "bk\udcff/k"), {}, "--upload",
                 id="report-upload-not-utf8"),
    pytest.param(("export", "--since", "1h", "--to", "out\udcff"), {}, "--to",
                 id="export-to-not-utf8"),
    pytest.param(("report", "--from-export", "out\udcff"), {}, "--from-export",
                 id="report-from-export-not-utf8"),
    pytest.param(("frobnicate",), {}, "invalid choice", id="unknown-command"),
    pytest.param((), {}, "required", id="no-command"),
]


@pytest.mark.parametrize(("argv", "env", "words"), FLAG_CASES)
@pytest.mark.parametrize("existing", [False, True], ids=["no-db", "db"])
def test_bad_flag_is_one_line_exit_2_and_writes_nothing(
        cli: Cli, argv: tuple[str, ...], env: dict[str, str], words: str,
        existing: bool) -> None:
    """A bad flag value exits 2 with one line naming it; the database is neither created
    nor touched, and nothing else is written."""
    if existing:
        seed_history(cli.db)
    before = fingerprint(cli.db)
    files_before = sorted(cli.home.rglob("*"))
    code, out, err = cli.run(*argv, env=env)
    assert_one_clear_line(code, out, err, words)
    assert fingerprint(cli.db) == before
    assert sorted(cli.home.rglob("*")) == files_before


def test_unknown_account_is_a_usage_error_for_report_and_export(cli: Cli) -> None:
    """An account the history has never seen is a usage error (exit 2) for report and
    export alike, naming the accounts it knows, and writes nothing."""
    seed_history(cli.db)
    before = fingerprint(cli.db)
    for argv in (("report", "--account", "nobody"),
                 ("export", "--account", "nobody", "--to", str(cli.home / "out"))):
        code, out, err = cli.run(*argv)
        assert_one_clear_line(code, out, err, "nobody")
        assert "acme" in err
    assert fingerprint(cli.db) == before
    assert not (cli.home / "out").exists()


def write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def huge(folder: Path) -> str:
    """The path of a sparse file of 17 MiB of zero bytes (made once)."""
    path = folder / "huge.img"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            handle.truncate(17 * 1024 * 1024)
    return str(path)


#: The shipped example price list, the base of the broken ones.
PRICES = (Path(__file__).resolve().parent.parent / "nexus_audit" / "data"
          / "pricing.toml").read_text()


def config_cases(home: Path) -> list[tuple[str, dict[str, str], str]]:
    """Broken configuration (files and variables): id, environment, words of the error."""
    cfg = home / "cfg"
    return [
        ("config-missing", {"NEXUS_AUDIT_CONFIG": str(cfg / "absent.toml")}, "cannot read"),
        ("config-not-toml", {"NEXUS_AUDIT_CONFIG": str(write(cfg / "a.toml", "db = [\n"))},
         "invalid TOML"),
        ("config-binary", {"NEXUS_AUDIT_CONFIG": str(write(cfg / "b.toml", b"\xff\xfe\x00"))},
         "b.toml"),
        ("config-unknown-key", {"NEXUS_AUDIT_CONFIG": str(write(cfg / "c.toml",
                                                                "databse = 'x.duckdb'\n"))},
         "unknown setting"),
        ("config-wrong-type", {"NEXUS_AUDIT_CONFIG": str(write(cfg / "d.toml",
                                                               "rate_budget = 'lots'\n"))},
         "rate_budget:"),
        ("config-interval", {"NEXUS_AUDIT_CONFIG": str(write(cfg / "e.toml",
                                                             "interval = 'hourly'\n"))},
         "interval"),
        ("config-accounts-not-array", {"NEXUS_AUDIT_CONFIG": str(write(
            cfg / "f.toml", "accounts = 'prod'\n"))}, "accounts"),
        ("config-account-without-key", {"NEXUS_AUDIT_CONFIG": str(write(
            cfg / "g.toml", "[[accounts]]\nname = 'prod'\n"))}, "no key"),
        ("config-account-env-unset", {"NEXUS_AUDIT_CONFIG": str(write(
            cfg / "h.toml", "[[accounts]]\nname = 'prod'\napi_key_env = 'NOT_SET_ANYWHERE'\n"
        ))}, "NOT_SET_ANYWHERE"),
        ("budget-zero", {"NEXUS_RATE_BUDGET": "0"}, "NEXUS_RATE_BUDGET"),
        ("budget-word", {"NEXUS_RATE_BUDGET": "plenty"}, "NEXUS_RATE_BUDGET"),
        ("api-url", {"NEXUS_API_URL": "ftp://example.com"}, "NEXUS_API_URL"),
        ("key-and-key-file", {"NEXUS_API_KEY": KEY, "NEXUS_API_KEY_FILE": str(
            write(cfg / "key", KEY))}, "not both"),
        ("key-with-space", {"NEXUS_API_KEY": "two words"}, "NEXUS_API_KEY"),
        ("key-file-missing", {"NEXUS_API_KEY_FILE": str(cfg / "absent.key")}, "cannot read"),
        ("key-file-is-a-folder", {"NEXUS_API_KEY_FILE": str(cfg)}, "cannot read"),
        ("key-file-empty", {"NEXUS_API_KEY_FILE": str(write(cfg / "empty.key", "\n"))},
         "empty"),
        ("key-file-binary", {"NEXUS_API_KEY_FILE": str(write(cfg / "bin.key",
                                                             b"\xff\xfe\xfa"))}, "UTF-8"),
        ("key-file-two-words", {"NEXUS_API_KEY_FILE": str(write(cfg / "two.key", "a b\n"))},
         "more than one word"),
        ("listen", {"NEXUS_AUDIT_LISTEN": "localhost"}, "listen"),
        # A key that cannot go in a header (aiohttp refused it mid-crawl, with a traceback).
        ("key-control", {"NEXUS_API_KEY": "nxk_\x1b[2J_key"}, "NEXUS_API_KEY"),
        ("key-file-control", {"NEXUS_API_KEY_FILE": str(write(cfg / "ctl.key",
                                                              "nxk_\x00_key\n"))},
         "printable"),
        # Variables holding bytes that are not UTF-8 (lone surrogates in Python).
        ("account-not-utf8", {"NEXUS_ACCOUNT": "acme\udcff"}, "NEXUS_ACCOUNT"),
        ("db-not-utf8", {"NEXUS_AUDIT_DB": str(cfg / "h\udcff.duckdb")}, "NEXUS_AUDIT_DB"),
        ("listen-not-utf8", {"NEXUS_AUDIT_LISTEN": "\udcff:0"}, "NEXUS_AUDIT_LISTEN"),
        # Prices no report can add up (amounts are DECIMAL(38,12)), or a plan size no
        # record can have: a DuckDB conversion error at report time before.
        ("pricing-price-huge", {"NEXUS_AUDIT_PRICING": str(write(
            cfg / "huge-price.toml", PRICES.replace("hourly = 0.0075", "hourly = 1e300")))},
         "hourly"),
        ("pricing-rate-huge", {"NEXUS_AUDIT_PRICING": str(write(
            cfg / "huge-rate.toml", PRICES.replace("storage_gb_month = 0.02",
                                                   "storage_gb_month = 1e40")))},
         "storage_gb_month"),
        ("pricing-plan-cpu-huge", {"NEXUS_AUDIT_PRICING": str(write(
            cfg / "huge-cpu.toml", PRICES.replace("cpu = 1\n", "cpu = 99999999999999999999\n")))},
         "cpu"),
        # A setting naming a huge or endless file (a disk image, /dev/zero) by mistake:
        # refused at 16 MiB, not read whole (or for ever). The file is sparse.
        ("config-endless", {"NEXUS_AUDIT_CONFIG": huge(cfg)}, "not a settings file"),
        ("key-file-endless", {"NEXUS_API_KEY_FILE": huge(cfg)}, "not a settings file"),
        ("pricing-endless", {"NEXUS_AUDIT_PRICING": huge(cfg)}, "not a settings file"),
        ("policy-endless", {"NEXUS_AUDIT_POLICY": huge(cfg)}, "not a settings file"),
        ("pricing-missing", {"NEXUS_AUDIT_PRICING": str(cfg / "absent-prices.toml")},
         "absent-prices.toml"),
        ("pricing-broken", {"NEXUS_AUDIT_PRICING": str(write(cfg / "p.toml", "plans = 3\n"))},
         "p.toml"),
        ("policy-broken", {"NEXUS_AUDIT_POLICY": str(write(cfg / "pol.toml",
                                                           "[baseline]\nmax_stopped = 'x'\n"))},
         "pol.toml"),
    ]


UNREACHABLE = "http://127.0.0.1:9/v2"
#: Settings a command does not use: a crawl neither prices nor judges, a report does not
#: listen; each command refuses only what it reads.
NOT_READ_BY = {("crawl", "pricing-missing"), ("crawl", "pricing-broken"),
               ("crawl", "policy-broken"), ("crawl", "pricing-endless"),
               ("crawl", "policy-endless"), ("report", "listen"),
               ("report", "listen-not-utf8"), ("crawl", "pricing-price-huge"),
               ("crawl", "pricing-rate-huge"), ("crawl", "pricing-plan-cpu-huge")}


@pytest.mark.parametrize("command", ["crawl", "report", "serve"])
def test_broken_configuration_is_one_line_exit_2_and_writes_nothing(cli: Cli,
                                                                    command: str) -> None:
    """Every broken setting (config file, key, key file, budget, URL, listen, prices,
    policy) fails crawl, report and serve with one line naming it, exit 2, nothing written."""
    seed_history(cli.db)
    before = fingerprint(cli.db)
    for case, env, words in config_cases(cli.home):
        files_before = sorted(cli.home.rglob("*"))
        if (command, case) in NOT_READ_BY:
            continue
        if command != "report" and "NEXUS_API_KEY" not in env and \
                "NEXUS_API_KEY_FILE" not in env and "NEXUS_AUDIT_CONFIG" not in env:
            env = {**env, "NEXUS_API_KEY": KEY}  # so the setting at fault is the one tested
        # Never the production API, should a case get as far as crawling.
        env = {"NEXUS_API_URL": UNREACHABLE, **env}
        code, out, err = cli.run(command, env=env)
        try:
            assert_one_clear_line(code, out, err, words)
        except AssertionError as exc:
            raise AssertionError(f"{command} with {case}: {exc}") from None
        assert fingerprint(cli.db) == before, case
        assert sorted(cli.home.rglob("*")) == files_before, case


# -- /report parameters ---------------------------------------------------------------------

BAD_QUERIES = [
    ({"since": "yesterday"}, "since"), ({"since": "0s"}, "since"), ({"since": "-1d"}, "since"),
    ({"since": "2026-02-30"}, "since"), ({"since": "99999999w"}, "since"),
    ({"until": "soon"}, "until"), ({"until": "2999-01-01T00:00:00Z"}, "until"),
    ({"since": "1h", "until": "2h"}, "since"), ({"account": "nobody"}, "account"),
    ({"stale_after": "-1d"}, "stale_after"), ({"stale_after": "forever"}, "stale_after"),
    ({"format": "csv"}, "format"), ({"sinse": "30d"}, "sinse"),
]


@pytest.mark.parametrize(("query", "parameter"), BAD_QUERIES)
def test_report_query_parser_names_the_bad_parameter(query: dict[str, str],
                                                      parameter: str) -> None:
    """Each bad /report value is a UsageError naming its parameter, in one line."""
    with pytest.raises(UsageError) as info:
        parse_report_query(query, accounts=("acme",), now=NOW)
    assert info.value.parameter == parameter
    assert "\n" not in str(info.value)


async def test_report_endpoint_answers_400_and_leaves_the_database_alone(
        tmp_path: Path) -> None:
    """Over HTTP, every bad parameter (and a repeated one) is a 400 BAD_PARAMETER with a
    one-line message naming it; the database keeps every byte."""
    db = tmp_path / "audit.duckdb"
    seed_history(db)
    before = fingerprint(db)
    settings = Settings(accounts=(AccountConfig(name="acme", api_key=Secret(KEY)),), db_path=db)
    reports = StoreReports(Store(db), settings, load_pricing(None), FakeClock(NOW))
    app = build_app(exposition=_NoMetrics(), reports=reports,
                    readiness=lambda: Readiness(True), auth=AuthPolicy(), clock=FakeClock(NOW))
    async with TestClient(TestServer(app)) as client:
        for query, parameter in [*BAD_QUERIES, ({"since": ["1d", "2d"]}, "since")]:
            response = await client.get("/report", params=_pairs(query))
            body = await response.json()
            assert response.status == 400, (query, body)
            assert body["error"]["code"] == "BAD_PARAMETER"
            assert body["error"]["parameter"] == parameter
            assert "\n" not in body["error"]["message"]
            assert "Traceback" not in json.dumps(body)
        good = await client.get("/report", params={"since": "1d", "account": "acme"})
        assert good.status == 200
    assert fingerprint(db) == before


class _NoMetrics:
    """An exposition that is never asked for (only /report is exercised)."""

    def cached(self, accept: str, *, gzip: bool = False) -> tuple[bytes, str] | None:
        raise AssertionError("not scraped in this test")

    def render(self, accept: str) -> tuple[bytes, str]:
        raise AssertionError("not scraped in this test")


def _pairs(query: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in query.items():
        for one in value if isinstance(value, list) else [value]:
            out.append((name, one))
    return out
