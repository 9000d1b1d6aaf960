"""Findings in every output: table, Markdown, CSV, /report and the nexus_findings gauges."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from importlib import resources
from pathlib import Path

import pytest

from nexus_audit.audit.report import Report
from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.policy import Policy, parse_policy
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import FakeClock, Window
from nexus_audit.errors import ConfigError
from nexus_audit.history.store import Store
from nexus_audit.metrics import FindingsCollector, Snapshot, SnapshotHolder
from nexus_audit.output.render import CSV_COLUMNS, CSV_FINDING_COLUMNS, render
from nexus_audit.service.runtime import Service
from nexus_audit.service.web import ReportQuery
from tests.test_findings import report_with
from tests.test_queries import PRICES, T0, H
from tests.test_report import build, rich_history
from tests.test_store import bucket, crawl, inst

POLICY = parse_policy(b"""
[baseline]
allowed_regions = ["eu-1"]
[[exceptions]]
bucket = "b-odd"
reason = "reviewed"
owner = "sec@example.com"
expires = 2026-03-01T10:30:00Z
""", "p.toml")


@pytest.fixture
def rich_store(tmp_path: Path) -> Store:
    """The rich history of the report tests."""
    store = Store(tmp_path / "rich.duckdb")
    store.migrate()
    rich_history(store)
    return store


@pytest.fixture
def judged(rich_store: Store) -> Report:
    """The rich history's report with POLICY."""
    return report_with(rich_store, POLICY)


def test_table_lists_findings_worst_first(judged: Report) -> None:
    """The table gains a findings section: a summary line, expired first, 80 columns."""
    text = render(judged, "table")
    section = text.split("POLICY FINDINGS", 1)[1]
    assert "4 (2 open, 1 expired exception, 1 accepted)" in section
    rows = [line for line in section.splitlines() if "b-" in line or "i-" in line]
    assert rows[0].startswith("critical  expired")
    assert all(len(line) <= 80 for line in text.splitlines())


def test_table_and_markdown_without_findings_say_so(rich_store: Store) -> None:
    """A policy nothing breaks in the window: the section says there is no finding."""
    quiet = parse_policy(b'[baseline]\nallowed_regions = ["eu-1", "us-1"]\n', "p.toml")
    r = report_with(rich_store, quiet)
    r = Report(**{**{f: getattr(r, f) for f in r.__dataclass_fields__}, "findings": ()})
    assert "no finding in the window" in render(r, "table")
    assert "No finding in the window." in render(r, "markdown")


def test_markdown_has_every_finding_with_its_exception(judged: Report) -> None:
    """Markdown lists each finding, the exception's owner and expiry included."""
    text = render(judged, "markdown").split("## Policy findings", 1)[1]
    assert judged.findings is not None
    assert text.count("\n| ") == len(judged.findings) + 1  # header plus one row each
    assert "b-odd (owner sec@example.com, until 2026-03-01T10:30:00Z: reviewed)" in text


def test_csv_adds_finding_columns_only_with_a_policy(judged: Report,
                                                     rich_store: Store) -> None:
    """With a policy, CSV has finding rows and extra columns; without, it is unchanged."""
    rows = list(csv.DictReader(io.StringIO(render(judged, "csv"))))
    assert tuple(rows[0]) == CSV_COLUMNS + CSV_FINDING_COLUMNS
    found = [r for r in rows if r["section"] == "finding"]
    assert judged.findings is not None
    assert len(found) == len(judged.findings)
    expired = next(r for r in found if r["status"] == "expired")
    assert (expired["id"], expired["severity"], expired["exception_owner"],
            expired["current"]) == ("b-odd", "critical", "sec@example.com", "true")
    plain = list(csv.DictReader(io.StringIO(render(build(rich_store), "csv"))))
    assert tuple(plain[0]) == CSV_COLUMNS
    assert not [r for r in plain if r["section"] == "finding"]


def test_ocsf_format_needs_a_policy(rich_store: Store) -> None:
    """Rendering OCSF from a report built without a policy is a ConfigError."""
    with pytest.raises(ConfigError, match="no policy is configured"):
        render(build(rich_store), "ocsf")


def test_collector_emits_nothing_without_a_policy() -> None:
    """No policy: no nexus_findings family at all; with counts, one sample per key."""
    holder = SnapshotHolder()
    assert list(FindingsCollector(holder).collect()) == []
    holder.swap(Snapshot(generation=1, findings={("a", "bucket.public", "high", "open"): 2}))
    (family,) = FindingsCollector(holder).collect()
    assert [(s.labels, s.value) for s in family.samples] == [
        ({"account": "a", "rule": "bucket.public", "severity": "high", "status": "open"}, 2)]


def service(store: Store, policy: Policy | None, now: datetime) -> Service:
    """A Service over ``store`` for account acme, on a fake clock (never started)."""
    settings = Settings(accounts=(AccountConfig(name="acme", api_key=Secret("nx_test_k")),),
                        db_path=store.path)
    return Service(settings, store, PRICES, clock=FakeClock(now), grace=0.0, policy=policy)


def test_serve_gauges_and_report_carry_current_findings(tmp_path: Path) -> None:
    """After a rebuild, nexus_findings counts current findings (zeros included), and
    /report's source adds the findings key; without a policy neither appears."""
    store = Store(tmp_path / "serve.duckdb")
    store.migrate()
    for hour in range(4):
        crawl(store, T0 + hour * H, account="acme",
              instances=[inst("i-1", region="ap-1"), inst("i-2")],
              buckets=[bucket("b-odd", access="public"),
                       bucket("b-2", access="public" if hour == 1 else "private")])
    now = T0 + 4 * H
    svc = service(store, POLICY, now)
    svc.rebuild_snapshot()
    reg = svc.exporter.registry

    def value(rule: str, severity: str, status: str) -> float | None:
        return reg.get_sample_value("nexus_findings", {"account": "acme", "rule": rule,
                                                       "severity": severity, "status": status})

    assert value("instance.region", "medium", "open") == 1
    assert value("bucket.public", "high", "accepted") == 1  # b-odd; b-2's ended at 1h
    assert value("bucket.public", "high", "open") == 0
    assert value("bucket.public", "critical", "expired") == 0
    data = svc.reports.report(ReportQuery(window=Window(T0, now)))
    assert {(f["resource"], f["status"]) for f in data["findings"]} == {
        ("i-1", "open"), ("b-odd", "accepted"), ("b-2", "open")}

    later = service(store, POLICY, T0 + 12 * H)
    crawl(store, T0 + 11 * H, account="acme", instances=[inst("i-1", region="ap-1")],
          buckets=[bucket("b-odd", access="public")])
    later.rebuild_snapshot()
    assert later.exporter.registry.get_sample_value(
        "nexus_findings", {"account": "acme", "rule": "bucket.public", "severity": "critical",
                           "status": "expired"}) == 1

    plain = service(store, None, now)
    plain.rebuild_snapshot()
    assert plain.exporter.registry.get_sample_value(
        "nexus_findings", {"account": "acme", "rule": "instance.region",
                           "severity": "medium", "status": "open"}) is None
    assert "findings" not in plain.reports.report(ReportQuery(window=Window(T0, now)))


def test_reload_takes_new_prices_and_a_broken_file_keeps_them(tmp_path: Path) -> None:
    """Service.reload (SIGHUP) re-reads the price list: the run-rate and nexus_pricing_info
    follow it at once, and so does the report; a file that no longer loads changes nothing
    and says so."""
    store = Store(tmp_path / "serve.duckdb")
    store.migrate()
    crawl(store, T0, account="acme", instances=[inst("i-1", plan="micro")], buckets=[])
    shipped = resources.files("nexus_audit").joinpath("data/pricing.toml").read_text()
    prices = tmp_path / "prices.toml"
    prices.write_text(shipped.replace('name = "example-list-prices"', 'name = "ours"'),
                      encoding="utf-8")
    settings = Settings(accounts=(AccountConfig(name="acme", api_key=Secret("nx_test_k")),),
                        db_path=store.path, pricing_file=prices)
    svc = Service(settings, store, load_pricing(prices), clock=FakeClock(T0 + H), grace=0.0)
    svc.rebuild_snapshot()
    reg = svc.exporter.registry

    def compute() -> float | None:
        return reg.get_sample_value("nexus_cost_hourly", {"account": "acme",
                                                          "region": "eu-1", "kind": "compute"})

    assert compute() == pytest.approx(0.015)
    prices.write_text(shipped.replace('name = "example-list-prices"', 'name = "ours-v2"')
                      .replace("hourly = 0.015", "hourly = 0.02"), encoding="utf-8")
    assert svc.reload()
    assert compute() == pytest.approx(0.02)
    (info,) = [s for m in reg.collect() if m.name == "nexus_pricing_info" for s in m.samples]
    assert info.labels["name"] == "ours-v2"
    report = svc.reports.report(ReportQuery(window=Window(T0, T0 + H)))
    assert report["pricing"]["name"] == "ours-v2"

    prices.write_text("name = \n", encoding="utf-8")
    assert not svc.reload()
    assert compute() == pytest.approx(0.02)
    report = svc.reports.report(ReportQuery(window=Window(T0, T0 + H)))
    assert report["pricing"]["name"] == "ours-v2"
