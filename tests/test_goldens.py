"""Golden files for every rendering of the rich history, and for ``/metrics`` over it.

``tests/golden/report.json`` (tests/test_report.py) has the report JSON of the rich
history; here the same report in the other formats (table, Markdown, CSV), the same
history judged by a policy with every rule (those formats plus OCSF), and the exposition
of a Service over that history. A change of any rendering is a visible diff; refresh
with ``pytest --update-golden`` and review it (tests/golden_fixtures.py).

Only what varies between builds is normalised: nexus-audit's version (OCSF's product
version, ``nexus_audit_build_info``). Everything else is fixed by the fixture: the
history, the window, the prices and a fake clock; the process-life counters of the
exposition are set to fixed counts by the test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from nexus_audit import __version__
from nexus_audit.audit.report import Report
from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.policy import parse_policy
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.history.store import Store
from nexus_audit.output.render import render
from nexus_audit.service.runtime import Service
from tests.test_findings import report_with
from tests.test_queries import PRICES, T0, H
from tests.test_report import build, rich_history

Golden = Callable[[str, str], None]

#: A policy with every rule, an expired and an accepted exception (as tests/test_ocsf.py).
POLICY = parse_policy(b"""
[baseline]
allowed_regions = ["eu-1"]
required_tags = ["env", "owner"]
max_stopped = "3h"
max_public_bucket_size = 100
[[exceptions]]
bucket = "b-o*"
reason = "odd access, reviewed"
owner = "sec@example.com"
expires = 2026-03-01T10:30:00Z
""", "p.toml")
VERSION = "<version>"


@pytest.fixture(scope="module")
def rich_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The rich history of tests/test_report.py, built once for the module."""
    store = Store(tmp_path_factory.mktemp("golden") / "rich.duckdb")
    store.migrate()
    rich_history(store)
    return store


@pytest.fixture(scope="module")
def plain(rich_store: Store) -> Report:
    """The report tests/golden/report.json holds (no policy)."""
    return build(rich_store)


@pytest.fixture(scope="module")
def judged(rich_store: Store) -> Report:
    """The same report with POLICY's findings."""
    return report_with(rich_store, POLICY)


def test_the_fixture_is_the_report_json_golden(plain: Report) -> None:
    """The report rendered here is the one tests/golden/report.json holds (compared as
    data: that file's bytes are tests/test_report.py's to check)."""
    golden_json = (Path(__file__).parent / "golden" / "report.json").read_text("utf-8")
    assert json.loads(render(plain, "json")) == json.loads(golden_json)


@pytest.mark.parametrize(("fmt", "name"), [("table", "report.txt"), ("markdown", "report.md"),
                                           ("csv", "report.csv")])
def test_report_renderings(plain: Report, golden: Golden, fmt: str, name: str) -> None:
    """The table, Markdown and CSV of the report match their reviewed golden files."""
    golden(name, render(plain, fmt))


@pytest.mark.parametrize(("fmt", "name"), [("table", "findings.txt"),
                                           ("markdown", "findings.md"),
                                           ("csv", "findings.csv")])
def test_renderings_with_findings(judged: Report, golden: Golden, fmt: str, name: str) -> None:
    """With a policy, the table, Markdown and CSV (findings sections included) match."""
    assert judged.findings
    golden(name, render(judged, fmt))


def normalise_ocsf(text: str) -> str:
    """OCSF lines with nexus-audit's version (the product's, not OCSF's) replaced."""
    product = re.compile(r'("product":\{[^{}]*"version":)"' + re.escape(__version__) + '"')
    out, count = product.subn(rf'\1"{VERSION}"', text)
    assert count == text.count("\n"), "one product version per event line"
    return out


def test_ocsf_rendering(judged: Report, golden: Golden) -> None:
    """The OCSF events of the findings match their reviewed golden file."""
    golden("findings.ocsf.jsonl", normalise_ocsf(render(judged, "ocsf")))


def test_metrics_exposition(rich_store: Store, golden: Golden) -> None:
    """``/metrics`` of a Service over the rich history (two accounts, the policy, a fake
    clock at the window's end, nothing crawled by the Service itself) matches."""
    settings = Settings(accounts=(AccountConfig(name="acme", api_key=Secret("nx_test_a")),
                                  AccountConfig(name="beta", api_key=Secret("nx_test_b"))),
                        db_path=rich_store.path)
    service = Service(settings, rich_store, PRICES, clock=FakeClock(T0 + 12 * H), grace=0.0,
                      policy=POLICY)
    service.rebuild_snapshot()
    # The process-life counters, fixed: what two crawls and their requests count.
    service.crawl_stats.record("acme", ["instances"], "succeeded", 1.5)
    service.crawl_stats.record("beta", ["buckets"], "failed", 0.2)
    api = service.api_stats["acme"]
    api.requests[("GET /instances", "200")] += 3
    api.requests[("GET /instances", "500")] += 1
    api.retries[("GET /instances", "500")] += 1
    api.invalid_records["buckets"] += 2
    api.rate_limit_remaining, api.rate_limit_limit = 996, 1000
    body, content_type = service.exporter.render("")
    assert content_type.startswith("text/plain")
    text = body.decode("utf-8")
    build_info = f'nexus_audit_build_info{{version="{__version__}"}} 1.0\n'
    assert text.count(build_info) == 1
    golden("metrics.txt", text.replace(build_info,
                                       f'nexus_audit_build_info{{version="{VERSION}"}} 1.0\n'))


def test_every_golden_file_is_checked() -> None:
    """Every file under tests/golden/ is one these tests (or report.json's) compare."""
    names = {p.name for p in (Path(__file__).parent / "golden").iterdir()}
    assert names == {"report.json", "report.txt", "report.md", "report.csv", "findings.txt",
                     "findings.md", "findings.csv", "findings.ocsf.jsonl", "metrics.txt"}
