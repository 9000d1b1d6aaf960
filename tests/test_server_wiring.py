"""The wiring of ``serve``: flags over settings, budgets per key."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from nexus_audit.commands.serve import GC_THRESHOLDS, SWITCH_INTERVAL, apply_flags
from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import ConfigError, UsageError
from nexus_audit.service.runtime import shared_budgets


def test_flags_override_listen_and_both_intervals() -> None:
    """--listen, --interval and --bucket-interval win over the settings."""
    args = argparse.Namespace(listen="0.0.0.0:9100", interval="15m", bucket_interval="30s")
    settings = apply_flags(args, Settings())
    assert settings.web.listen == "0.0.0.0:9100"
    assert settings.interval == timedelta(minutes=15)
    assert settings.bucket_interval == timedelta(seconds=30)


def test_absent_flags_keep_the_settings() -> None:
    """Without flags, the configured listen address and intervals stay."""
    args = argparse.Namespace(listen=None, interval=None, bucket_interval=None)
    assert apply_flags(args, Settings()) == Settings()


@pytest.mark.parametrize(("flag", "value", "parameter"), [
    ("listen", "nohost", "--listen"), ("interval", "hourly", "--interval"),
    ("bucket_interval", "0s", "--bucket-interval"),
])
def test_bad_flags_are_usage_errors_naming_the_flag(flag: str, value: str,
                                                    parameter: str) -> None:
    """A malformed flag is a UsageError that names it."""
    values = {"listen": None, "interval": None, "bucket_interval": None, flag: value}
    with pytest.raises(UsageError) as info:
        apply_flags(argparse.Namespace(**values), Settings())
    assert info.value.parameter == parameter


def test_one_budget_per_key_at_the_smallest_configured_rate() -> None:
    """Accounts sharing a key (and URL) share one budget; other keys get their own."""
    shared = Secret("nx_test_sk_shared")
    accounts = (
        AccountConfig(name="a", api_key=shared, rate_budget=300),
        AccountConfig(name="b", api_key=shared, rate_budget=200),
        AccountConfig(name="c", api_key=Secret("nx_test_sk_other"), rate_budget=300),
    )
    budgets = shared_budgets(accounts, FakeClock())
    assert budgets["a"] is budgets["b"]
    assert budgets["a"].per_minute == 200
    assert budgets["c"] is not budgets["a"]
    assert budgets["c"].per_minute == 300


def test_a_bucket_interval_that_would_starve_instance_crawls_is_refused(tmp_path: Path) -> None:
    """Polls reserving more than half the budget are refused up front, naming the fix."""
    from nexus_audit.domain.pricing import load_pricing
    from nexus_audit.history.store import Store
    from nexus_audit.service.runtime import Service

    account = AccountConfig(name="prod", api_key=Secret("nx_test_wiring"), rate_budget=120)
    store = Store(tmp_path / "h.duckdb")
    starving = Settings(accounts=(account,), db_path=store.path,
                        bucket_interval=timedelta(seconds=1))
    with pytest.raises(ConfigError, match="too short for the rate budget of prod"):
        Service(starving, store, load_pricing(None), clock=FakeClock(), grace=0.0)
    fine = replace(starving, bucket_interval=timedelta(minutes=1))
    service = Service(fine, store, load_pricing(None), clock=FakeClock(), grace=0.0)
    assert service.budgets["prod"].reserve * 2 <= service.budgets["prod"].capacity


def test_serve_tunes_the_interpreter_for_the_event_loop() -> None:
    """``serve`` (in a process of its own: it changes process-wide settings) lets a thread
    waiting for the GIL have it within a millisecond, runs the garbage collector's full
    passes rarely and keeps what exists at start-up out of them."""
    code = ("import gc, sys; from nexus_audit.commands.serve import tune_interpreter; "
            "tune_interpreter(); print(sys.getswitchinterval(), gc.get_threshold(), "
            "gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split(maxsplit=1)
    assert float(out[0]) == SWITCH_INTERVAL < 0.005
    assert out[1].strip() == f"{GC_THRESHOLDS} True"
