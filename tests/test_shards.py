"""Beyond one machine: accounts sharded across replicas by a stable rule, and a set of
their Parquet exports reporting exactly as one database holding every account."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nexus_audit.audit.report import build_report
from nexus_audit.cli import main
from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.model import Bucket, CrawlSummary, Instance
from nexus_audit.domain.policy import parse_policy
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.shards import Shard, shard_of
from nexus_audit.domain.timeutil import Window
from nexus_audit.errors import ConfigError, UsageError
from nexus_audit.history.exports import MARKER, ParquetHistory
from nexus_audit.history.parquet import export_history
from nexus_audit.history.protocol import History
from nexus_audit.history.store import Store
from nexus_audit.output.render import render

T0 = datetime(2026, 6, 1, tzinfo=UTC)
H = timedelta(hours=1)
WINDOW = Window(T0 + 2 * H, T0 + 12 * H)
PRICING = load_pricing()
POLICY = parse_policy(b"""
[baseline]
allowed_regions = ["eu-1"]
max_public_bucket_size = "2GB"
""", "p.toml")
#: Six accounts; with three shards, each shard holds at least one (checked below).
ACCOUNTS = ("acme", "beta", "delta", "omega", "eu-prod", "audit")


def _inst(ident: str, status: str, region: str = "eu-1") -> Instance:
    return Instance(ident, ident, status, region, 2, 2.0, "micro", "{}", None, "{}")


def _bucket(ident: str, access: str, size: int) -> Bucket:
    return Bucket(ident, "eu-1", size, access, None, "{}", "{}")


def _commit(store: Store, account: str, at: datetime, hour: int, n: int) -> None:
    """One crawl of ``account`` at ``at``: churn, exposures and a failed crawl."""
    failed = hour == 7 and n % 2 == 0
    instances = [_inst(f"{account}-i{k}", "stopped" if (hour + k) % 5 == 0 else "running",
                       "us-1" if k == 2 and hour > 4 else "eu-1") for k in range(3 + n % 2)]
    buckets = [_bucket(f"{account}-b0", "public-read" if 3 <= hour < 6 else "private",
                       (hour + 1) * 10**9),
               _bucket(f"{account}-b1", "private", 10**8 * (n + 1))]
    staged = store.begin_crawl(account, ("instances", "buckets"), at - timedelta(minutes=2))
    staged.add_instances(instances)
    staged.add_buckets(buckets)
    summary = CrawlSummary(account=account, kinds=("instances", "buckets"),
                           started_at=at - timedelta(minutes=2), finished_at=at,
                           status="failed" if failed else "succeeded",
                           instances=len(instances), buckets=len(buckets), requests=3,
                           error="boom" if failed else None,
                           error_code="INTERNAL" if failed else None)
    if failed:
        store.record_failure(summary, staged)
    else:
        store.commit(staged, summary)


def _history(stores: Callable[[str], Store]) -> None:
    """Twelve hourly rounds; each account commits a few minutes after the previous one."""
    for hour in range(12):
        for n, account in enumerate(ACCOUNTS):
            _commit(stores(account), account, T0 + hour * H + n * timedelta(minutes=3), hour, n)


def _report(history: History) -> str:
    report = build_report(history, WINDOW, stale_after=2 * H, pending_stale_after=H,
                          max_gap_instances=2 * H, max_gap_buckets=2 * H, pricing=PRICING,
                          now=WINDOW.until, policy=POLICY)
    # Each database seals its own evidence chain, so what a report cites of it differs
    # between one database and three; every answer must not.
    return render(replace(report, evidence=None), "json")


def test_shards_partition_the_accounts_stably() -> None:
    """Each account belongs to exactly one of n replicas, by a rule that never changes
    (SHA-256 of the name: the same on every machine, process and version)."""
    for count in range(1, 8):
        for account in ACCOUNTS:
            held = [i for i in range(1, count + 1) if Shard(i, count).holds(account)]
            assert held == [shard_of(account, count)]
    # Pinned: a change of the rule would move accounts between running replicas.
    assert [shard_of(a, 3) for a in ACCOUNTS] == [1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("text", ["3/2", "0/0", "0/3", "1/0", "a/b", "1", "1/2/3", " ", "-1/2",
                                  "١/٢"])
def test_bad_shard_specs_are_usage_errors(text: str) -> None:
    """Anything but i/n with 1 <= i <= n is refused, naming the flag."""
    with pytest.raises(UsageError, match="--shard"):
        Shard.parse(text)


def test_settings_keep_only_the_shards_accounts() -> None:
    """--shard keeps the shard's accounts; a shard holding none is a configuration error."""
    settings = Settings(accounts=tuple(AccountConfig(name=a, api_key=Secret(f"nx_{a}"))
                                       for a in ACCOUNTS))
    kept = [a.name for i in (1, 2, 3) for a in settings.in_shard(f"{i}/3").accounts]
    assert sorted(kept) == sorted(ACCOUNTS)
    lonely = Settings(accounts=(AccountConfig(name="acme", api_key=Secret("nx_a")),))
    other = 1 if shard_of("acme", 2) == 2 else 2
    with pytest.raises(ConfigError, match="holds none"):
        lonely.in_shard(f"{other}/2")


def test_three_shards_report_as_one_database(tmp_path: Path) -> None:
    """Three replicas' exports, read together, give byte for byte the report of one
    database that crawled every account (crawl ids repeat across the replicas' databases;
    the reader keeps them apart)."""
    whole = Store(tmp_path / "whole.duckdb")
    whole.migrate()
    shards = {i: Store(tmp_path / f"shard{i}.duckdb") for i in (1, 2, 3)}
    for store in shards.values():
        store.migrate()
    _history(lambda account: whole)
    _history(lambda account: shards[shard_of(account, 3)])
    dirs = []
    for i, store in shards.items():
        out = tmp_path / f"export{i}"
        export_history(store, out, WINDOW)
        dirs.append(out)
    expected = _report(whole)
    assert json.loads(expected)["exposures"]  # the history has something to show
    assert _report(ParquetHistory(*dirs)) == expected
    assert _report(ParquetHistory(*reversed(dirs))) == expected
    # One database cites its chain head; three have three chains, so no single head.
    cited = {name: json.loads(render(build_report(
        source, WINDOW, stale_after=2 * H, pending_stale_after=H, max_gap_instances=2 * H,
        max_gap_buckets=2 * H, pricing=PRICING, now=WINDOW.until), "json"))["evidence"]
        for name, source in (("whole", whole), ("shards", ParquetHistory(*dirs)))}
    assert cited["whole"]["chain_head"] is not None
    assert cited["shards"]["chain_head"] is None
    assert all(c["manifest"] for c in cited["shards"]["crawls"])


def _cli(*args: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
         capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def exports(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two exports of disjoint accounts and one that overlaps the first."""
    stores = {name: Store(tmp_path / f"{name}.duckdb") for name in ("a", "b", "c")}
    for store in stores.values():
        store.migrate()
    for hour in range(3, 6):
        _commit(stores["a"], "acme", T0 + hour * H, hour, 1)
        _commit(stores["b"], "beta", T0 + hour * H, hour, 1)
        _commit(stores["c"], "acme", T0 + hour * H, hour, 1)
    for name, store in stores.items():
        export_history(store, tmp_path / f"x{name}", WINDOW)
    return tmp_path / "xa", tmp_path / "xb", tmp_path / "xc"


def test_report_over_exports_from_the_cli(exports: tuple[Path, Path, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`report --from-export A --from-export B` reads both; bad sets are one line, exit 2 or
    1, and nothing is written."""
    a, b, c = exports
    env = {"NEXUS_AUDIT_DB": str(tmp_path / "never.duckdb")}
    since = "2026-06-01T03:00:00Z"
    until = "2026-06-01T07:00:00Z"
    code, out, err = _cli("report", "--since", since, "--until", until, "--format", "json",
                          "--from-export", str(a), "--from-export", str(b), env=env,
                          monkeypatch=monkeypatch, capsys=capsys)
    assert (code, err) == (0, "")
    assert json.loads(out)["accounts"] == ["acme", "beta"]
    cases = [
        ((a, c), 2, "overlap"),                           # acme in two exports
        ((a, tmp_path / "missing"), 1, "does not exist"),
        ((a, a), 2, "twice"),
    ]
    (b / MARKER).write_text('{"schema_version": 2}\n')
    cases.append(((a, b), 2, "mix schema versions"))
    for dirs, want, words in cases:
        flags = [x for d in dirs for x in ("--from-export", str(d))]
        code, out, err = _cli("report", "--since", since, "--until", until, *flags, env=env,
                              monkeypatch=monkeypatch, capsys=capsys)
        assert code == want, (dirs, err)
        assert out == ""
        assert words in err
        assert len(err.strip().splitlines()) <= 2  # the error, perhaps a hint
        assert "Traceback" not in err
    assert not (tmp_path / "never.duckdb").exists()


@pytest.mark.parametrize("command", ["crawl", "serve"])
@pytest.mark.parametrize("spec", ["3/2", "0/0", "x"])
def test_bad_shard_flags_exit_2(command: str, spec: str, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """crawl and serve refuse a malformed --shard (and NEXUS_AUDIT_SHARD) with one line,
    exit 2, before touching the database or the network."""
    env = {"NEXUS_API_KEY": "nx_test_shard_key", "NEXUS_API_URL": "http://127.0.0.1:9/v2",
           "NEXUS_AUDIT_DB": str(tmp_path / "h.duckdb")}
    code, out, err = _cli(command, "--shard", spec, env=env, monkeypatch=monkeypatch,
                          capsys=capsys)
    assert code == 2
    assert out == ""
    assert "--shard" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = _cli(command, env={**env, "NEXUS_AUDIT_SHARD": spec},
                          monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    assert out == ""
    assert "NEXUS_AUDIT_SHARD" in err
    assert not (tmp_path / "h.duckdb").exists()
