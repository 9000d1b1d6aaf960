"""``nexus-audit crawl`` end to end against a simulator thread, and its pure helpers."""

from __future__ import annotations

import argparse
import asyncio
import io
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from nexus_audit.api import RateBudget
from nexus_audit.api.budget import rates_in_force, shared_budgets
from nexus_audit.commands.crawl import (
    budget_share,
    crawl_command,
    format_summary,
    parse_kinds,
)
from nexus_audit.config import AccountConfig, Secret, Settings, load_settings
from nexus_audit.crawl.progress import (
    CrawlProgress,
    ProgressReporter,
    format_progress,
    time_left,
)
from nexus_audit.domain.model import CrawlSummary
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import ConfigError, UsageError
from nexus_audit.history.store import Store
from nexus_audit.simulator import SimulatorThread


def settings_for(sim: SimulatorThread, tmp_path: Path) -> Settings:
    """Settings from the environment a user would set."""
    return load_settings({"NEXUS_API_KEY": sim.key, "NEXUS_API_URL": sim.url,
                          "NEXUS_AUDIT_DB": str(tmp_path / "audit.duckdb")})


def args(kinds: str = "instances,buckets", account: str | None = None) -> argparse.Namespace:
    """What the CLI parser hands the command."""
    return argparse.Namespace(account=account, kinds=kinds)


def test_crawl_commits_and_prints_a_summary(simulator_thread: SimulatorThread, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A successful crawl exits 0, prints one summary line and lands in the store."""
    settings = settings_for(simulator_thread, tmp_path)
    with capture_logs() as logs:
        assert crawl_command(args(), settings) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("default: succeeded: 200 instances, 20 buckets, 3 requests, "
                               "0 retries, ")
    assert lines[0].endswith("1% of the 250/min budget")
    assert out.err == ""
    assert any(e["event"] == "crawl.finished" for e in logs)
    assert Store(settings.db_path).previous_regions("default")


def test_failed_crawl_exits_1_with_one_line(simulator_thread: SimulatorThread, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A rejected key exits 1 with one line naming the account and the API's reason."""
    settings = settings_for(simulator_thread, tmp_path)
    simulator_thread.revoke_key()
    with capture_logs():
        assert crawl_command(args(kinds="buckets"), settings) == 1
    out = capsys.readouterr()
    errors = out.err.strip().splitlines()
    assert len(errors) == 1
    assert errors[0].startswith("nexus-audit: error: account default: CloudNexus rejected "
                                "the API key: it is invalid or expired")
    assert simulator_thread.key not in out.err + out.out
    assert "default: failed" in out.out


def test_without_an_account_says_how_to_configure_one(tmp_path: Path) -> None:
    """No key configured is a ConfigError pointing at NEXUS_API_KEY."""
    settings = load_settings({"NEXUS_AUDIT_DB": str(tmp_path / "a.duckdb")})
    with pytest.raises(ConfigError, match="NEXUS_API_KEY"):
        crawl_command(args(), settings)


def test_kinds_are_validated() -> None:
    """--kinds takes known kinds in any order; anything else is a usage error."""
    assert parse_kinds("buckets, instances") == ("instances", "buckets")
    assert parse_kinds("buckets") == ("buckets",)
    with pytest.raises(UsageError, match="--kinds: volumes"):
        parse_kinds("instances,volumes")
    with pytest.raises(UsageError, match="nothing"):
        parse_kinds(" , ")


def test_budget_share_counts_at_least_one_minute() -> None:
    """A short crawl is measured against one minute's budget; a long one against its length."""
    assert budget_share(125, 250, 3.0) == pytest.approx(0.5)
    assert budget_share(500, 250, 240.0) == pytest.approx(0.5)


def test_accounts_sharing_a_key_crawl_at_the_smallest_rate() -> None:
    """As in serve: one budget per key (and URL), at the smallest configured rate, whatever
    the order of the accounts in the config file."""
    shared = Secret("nx_test_sk_shared")
    accounts = [
        AccountConfig(name="prod", api_key=shared, rate_budget=250),
        AccountConfig(name="staging", api_key=shared, rate_budget=100),
        AccountConfig(name="other", api_key=Secret("nx_test_sk_other"), rate_budget=300),
    ]
    assert rates_in_force(accounts) == {"prod": 100, "staging": 100, "other": 300}
    budgets = shared_budgets(accounts, FakeClock())
    assert budgets["prod"] is budgets["staging"]
    assert {name: b.per_minute for name, b in budgets.items()} == rates_in_force(accounts)


def test_format_summary_names_what_was_crawled() -> None:
    """The summary line lists the crawled kinds, requests, retries, seconds and budget share."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    summary = CrawlSummary(account="prod", kinds=("instances",), started_at=start,
                           finished_at=start + timedelta(seconds=2.5), status="succeeded",
                           instances=12345, requests=125, retries=2,
                           total_mismatch="instances: collected 12345, API total 12346")
    assert format_summary(summary, 250) == (
        "prod: succeeded: 12,345 instances, 125 requests, 2 retries, 2.5s, 50% of the "
        "250/min budget (totals differ: instances: collected 12345, API total 12346)")


def test_progress_line_shows_records_requests_budget_and_time_left() -> None:
    """The live line shows records of expected, requests, budget in use and an estimate."""
    clock = FakeClock()
    budget = RateBudget(100, clock=clock)
    for _ in range(25):
        budget.record_send(clock.monotonic())
    progress = CrawlProgress(account="prod", budget=budget, started=clock.monotonic() - 10.0)
    progress.records["instances"] = 2500
    progress.expect("instances", 10000)
    line = format_progress([progress], clock.monotonic())
    assert line == "prod: 2,500/10,000 records, 0 requests, budget 25%, ~30s left"
    assert time_left(0, 100, 5.0) is None
    assert time_left(100, 100, 5.0) == 0.0


class _NoJitter(random.Random):
    """An rng whose jitter is always the smallest: exact countdowns in tests."""

    def uniform(self, a: float, b: float) -> float:
        """The lower bound."""
        return a


def _bound_progress(budget: RateBudget, clock: FakeClock) -> CrawlProgress:
    """A crawl 10 s in, 400 of 1,000 records collected, on ``budget``."""
    progress = CrawlProgress(account="prod", budget=budget, started=clock.monotonic() - 10.0)
    progress.records["instances"] = 400
    progress.expect("instances", 1000)
    return progress


def test_progress_line_counts_down_while_the_budget_window_binds() -> None:
    """With the window's budget spent, the line says the rate limit holds the crawl and
    counts down to the next free slot instead of estimating; once free, the estimate is
    back."""
    clock = FakeClock()
    budget = RateBudget(4, clock=clock)
    for _ in range(4):
        budget.record_send(clock.monotonic())
        budget.record_done(clock.monotonic())
    progress = _bound_progress(budget, clock)
    prefix = "prod: 400/1,000 records, 0 requests, budget 100%, "
    assert format_progress([progress], clock.monotonic()) == (
        prefix + "rate limit reached, next request in 60s")
    clock.advance(35.5)
    assert format_progress([progress], clock.monotonic()) == (
        prefix + "rate limit reached, next request in 25s")
    clock.advance(24.0)  # half a second to go: the pacing between requests, not shown
    assert format_progress([progress], clock.monotonic()).endswith(", budget 100%, ~104s left")
    clock.advance(0.5)
    assert format_progress([progress], clock.monotonic()) == (
        "prod: 400/1,000 records, 0 requests, budget 0%, ~105s left")


def test_progress_line_counts_down_to_the_servers_reset() -> None:
    """With the server's remaining count at zero (another tool spends the key), the line
    counts down to the server's reset even though this crawl's own budget is barely used;
    with every slot in flight it says it waits for answers."""
    clock = FakeClock()
    budget = RateBudget(1000, clock=clock, rng=_NoJitter())
    progress = _bound_progress(budget, clock)
    budget.observe(1000, 0, reset_epoch=clock.now().timestamp() + 42, now=clock.monotonic(),
                   now_epoch=clock.now().timestamp())
    assert format_progress([progress], clock.monotonic()) == (
        "prod: 400/1,000 records, 0 requests, budget 0%, rate limit reached, next request "
        "in 42s")
    clock.advance(42)
    full = RateBudget(2, clock=clock)
    full.record_send(clock.monotonic())
    full.record_send(clock.monotonic())
    assert format_progress([_bound_progress(full, clock)], clock.monotonic()).endswith(
        ", budget 100%, rate limit reached, waiting for answers in flight")


async def test_the_terminal_line_counts_down() -> None:
    """The reporter's redrawn terminal line, on a fake clock, counts the wait down second
    by second."""
    clock = FakeClock()
    budget = RateBudget(1, clock=clock)
    budget.record_send(clock.monotonic())
    budget.record_done(clock.monotonic())
    stream = io.StringIO()
    reporter = ProgressReporter([_bound_progress(budget, clock)], stream=stream, clock=clock,
                                tty=True, interval=1.0)
    reporter.start()
    for _ in range(5):
        await asyncio.sleep(0)  # each turn the reporter sleeps 1 s of fake time and redraws
    await reporter.stop()
    lines = [line for line in stream.getvalue().split("\r\x1b[K") if line]
    waits = [int(line.rsplit(" in ", 1)[1].removesuffix("s")) for line in lines]
    assert len(waits) >= 3
    assert waits == list(range(59, 59 - len(waits), -1))
