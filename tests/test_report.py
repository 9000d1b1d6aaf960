"""The report as a whole: golden JSON on a history touching every section."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from nexus_audit.audit.report import Report, money
from nexus_audit.history.store import Store
from tests.test_queries import PRICES, T0, H, report
from tests.test_store import bucket, crawl, inst


def rich_history(store: Store) -> None:
    """Two accounts, hourly crawls for 12h: drift, a failed crawl, a gap, exposures, stale."""
    for hour in range(12):
        if hour in (6, 7, 8):
            continue  # nothing crawled: a coverage gap for acme
        at = T0 + hour * H
        failed = hour == 3
        crawl(store, at, account="acme", failed=failed, instances=[
            inst("i-web", name="web", plan="micro",
                 tags='{"env":"prod"}' if hour < 5 else '{"env":"prod","owner":"ops"}'),
            inst("i-batch", plan=None, cpu=4, memory_gb=16, region="us-1",
                 status="running" if hour < 2 else "stopped"),
            inst("i-old", status="stopped", plan="standard"),
            *([inst("i-new", plan=None, cpu=3, memory_gb=5)] if hour >= 9 else []),
        ], buckets=[
            bucket("b-logs", size=(hour + 1) * 10**9),
            bucket("b-site", access="public-read" if 4 <= hour < 10 else "private",
                   size=5 * 10**8, region="us-1"),
            bucket("b-odd", access="Authenticated-Read", size=10**8),
        ])
        crawl(store, at + timedelta(minutes=5), account="beta", instances=[
            inst("i-b1", plan="standard", cpu=4, memory_gb=16)])


def build(store: Store) -> Report:
    """The report of the rich history over [1h, 12h), stale after 6h."""
    return report(store, T0 + H, T0 + 12 * H, max_gap=2 * H, stale_after=6 * H)


@pytest.fixture
def rich(tmp_path: Path) -> Report:
    """The rich history's report."""
    store = Store(tmp_path / "rich.duckdb")
    store.migrate()
    rich_history(store)
    return build(store)


def test_report_json_golden(rich: Report, golden: Callable[[str, str], None]) -> None:
    """The report JSON of the rich history matches the reviewed golden file."""
    golden("report.json", json.dumps(rich.to_json_dict(), indent=2, sort_keys=False) + "\n")


def test_report_json_has_the_contract_keys(rich: Report) -> None:
    """Top-level and nested keys are exactly those DESIGN.md promises (plus coverage)."""
    d = rich.to_json_dict()
    assert list(d) == ["generated_at", "window", "accounts", "crawls", "inventory", "cost",
                       "drift", "public_buckets", "exposures", "stale_instances", "pricing",
                       "evidence"]
    assert set(d["evidence"]) == {"chain_head", "crawls"}
    assert all(set(c) == {"crawl_id", "account", "finished_at", "manifest"}
               for c in d["evidence"]["crawls"])
    assert set(d["crawls"]) == {"count", "succeeded", "failed", "last_success", "coverage",
                                "clock_skews"}
    assert set(d["cost"]) == {"currency", "accrued", "run_rate_hourly"}
    assert set(d["cost"]["accrued"]) == {"total", "compute", "storage", "by_region"}
    assert all(set(x) == {"kind", "id", "change", "field", "old", "new", "observed_at",
                          "account"} for x in d["drift"])
    assert all(s["stale_since"].endswith("Z") for s in d["stale_instances"])


def test_rich_history_answers(rich: Report) -> None:
    """Spot checks worked out by hand on the rich history."""
    d = rich.to_json_dict()
    assert d["crawls"]["failed"] == 1
    # acme: observations hold [1,5)+[5,7) then gap [7,9); beta's crawls at hh:05.
    assert {"account": "acme", "kind": "instances", "start": "2026-03-01T07:00:00Z",
            "end": "2026-03-01T09:00:00Z"} in d["crawls"]["coverage"]["gaps"]
    assert [(e["id"], e["start"], e["end"]) for e in d["exposures"]] == [
        ("b-odd", "2026-03-01T00:00:00Z", None),
        ("b-site", "2026-03-01T04:00:00Z", "2026-03-01T10:00:00Z")]
    assert [b["id"] for b in d["public_buckets"]] == ["b-odd"]
    stale = {s["id"]: (s["stale_since"], s["at_least"]) for s in d["stale_instances"]}
    assert stale == {"i-old": ("2026-03-01T00:00:00Z", True),
                     "i-batch": ("2026-03-01T02:00:00Z", False)}
    changes = {(x["id"], x["change"], x["field"]) for x in d["drift"]}
    assert changes == {("i-batch", "changed", "status"), ("i-web", "changed", "tags"),
                       ("i-new", "added", None), ("b-site", "changed", "access")}


def test_money_rounding() -> None:
    """Money rounds to 6 decimals, never shows negative zero, and never turns a non-finite
    amount into 0 (it raises: such an amount is a bug, not a cost of zero)."""
    assert money(1.23456789) == 1.234568
    assert str(money(-0.0000001)) == "0.0"
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="non-finite"):
            money(bad)
    assert money(None) == 0.0
    assert PRICES.storage_hourly(10**9) == 1.0
