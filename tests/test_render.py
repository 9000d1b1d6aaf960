"""Renderers: the table fits 80 columns and truncates; the others never drop a row."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from nexus_audit.errors import UsageError
from nexus_audit.render import CSV_COLUMNS, render
from nexus_audit.report import Drift, Exposure, PublicBucket, Report
from nexus_audit.store import Store
from tests.test_queries import T0
from tests.test_report import build, rich_history


@pytest.fixture
def rich(tmp_path: Path) -> Report:
    """The rich history's report, with 25 extra drift rows and a very long id."""
    store = Store(tmp_path / "rich.duckdb")
    store.migrate()
    rich_history(store)
    base = build(store)
    extra = tuple(Drift(kind="instance", id=f"i-{'x' * 60}-{n}", change="added", field=None,
                        old=None, new=None, observed_at=T0 + timedelta(hours=1),
                        account="acme") for n in range(25))
    return replace(base, drift=base.drift + extra)


def test_table_fits_80_columns_and_truncates(rich: Report) -> None:
    """Every table line fits 80 columns; the long drift list ends with '… and N more'."""
    text = render(rich, "table")
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "… and 20 more" in text
    for heading in ("CRAWLS AND COVERAGE", "INVENTORY", "COST (EUR)", "DRIFT",
                    "PUBLIC BUCKETS AND EXPOSURES", "STALE INSTANCES"):
        assert heading in text
    assert "100.65" in text  # accrued total, 2 decimals


def test_json_is_the_report_dict(rich: Report) -> None:
    """--format json prints exactly to_json_dict()."""
    assert json.loads(render(rich, "json")) == rich.to_json_dict()


def test_markdown_keeps_every_row(rich: Report) -> None:
    """Markdown lists every drift row, escapes pipes, and has a section per question."""
    text = render(rich, "markdown")
    drift_rows = [line for line in text.splitlines() if line.startswith("| 20")]
    assert len([r for r in drift_rows if "| instance |" in r or "| bucket |" in r]) >= 30
    assert "## Stale instances" in text
    assert "## Exposures in the window" in text
    assert "… and" not in text


def test_csv_has_a_section_column_and_every_row(rich: Report) -> None:
    """CSV: one header, a section on every row, all drift rows, parseable values."""
    rows = list(csv.DictReader(io.StringIO(render(rich, "csv"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert all(r["section"] for r in rows)
    assert len([r for r in rows if r["section"] == "drift"]) == len(rich.drift)
    tags = [r for r in rows if r["section"] == "drift" and r["field"] == "tags"]
    assert json.loads(tags[0]["new"]) == {"env": "prod", "owner": "ops"}
    exposures = [r for r in rows if r["section"] == "exposure"]
    assert {r["id"] for r in exposures} == {"b-odd", "b-site"}


def test_every_format_marks_an_exposure_the_first_crawl_saw(rich: Report) -> None:
    """b-odd was public at the first crawl (since at least then); b-site's exposure began
    later. The table marks the start with ≤ and explains it; markdown and CSV say it."""
    by_id = {e.id: e for e in rich.exposures}
    assert by_id["b-odd"].at_least
    assert not by_id["b-site"].at_least
    odd_start = by_id["b-odd"].start.strftime("%Y-%m-%dT%H:%M:%SZ")
    table = render(rich, "table")
    assert f"≤ {odd_start}" in table
    assert "≤: exposed since at least then" in table
    markdown = render(rich, "markdown")
    odd_rows = [line for line in markdown.splitlines() if "| b-odd |" in line]
    assert odd_rows
    assert all("| yes |" in line for line in odd_rows)
    assert any("| b-site |" in line and "| no |" in line for line in markdown.splitlines())
    rows = list(csv.DictReader(io.StringIO(render(rich, "csv"))))
    assert {(r["id"], r["at_least"]) for r in rows if r["section"] == "exposure"} == {
        ("b-odd", "true"), ("b-site", "false")}


def test_table_cuts_ids_before_times(rich: Report) -> None:
    """When a table must shrink to 80 columns, long ids are cut, times never: a cut time
    would read as another time."""
    long_id = "bk_staging-uploads-with-a-long-name-01"
    since = T0 + timedelta(minutes=7, seconds=34)
    report = replace(
        rich,
        public_buckets=(PublicBucket(id=long_id, region="ap-southeast-1", access="public-read",
                                     size_bytes=484 * 10**9, public_since=since,
                                     account="acme", at_least=True),),
        exposures=(Exposure(id=long_id, access="authenticated-read", start=since,
                            end=since + timedelta(hours=1), account="acme", at_least=True),),
        drift=rich.drift[:3])
    text = render(report, "table")
    assert max(len(line) for line in text.splitlines()) <= 80
    assert text.count("≤ 2026-03-01T00:07:34Z") == 2  # public since, exposure start
    assert "2026-03-01T01:07:34Z" in text  # exposure end
    assert long_id not in text  # the id gave way
    assert long_id[:10] in text


def test_unknown_format_is_usage_error(rich: Report) -> None:
    """An unknown format is a usage error naming the choices."""
    with pytest.raises(UsageError, match="table, json, markdown, csv"):
        render(rich, "xml")
