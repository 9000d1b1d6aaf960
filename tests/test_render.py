"""Renderers: the table fits 80 columns, shortens long lists and wraps long values; the
others never drop a row."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from nexus_audit.audit.report import Drift, Exposure, PublicBucket, Report
from nexus_audit.errors import UsageError
from nexus_audit.history.store import Store
from nexus_audit.output import render as render_module
from nexus_audit.output.render import CSV_COLUMNS, render, render_chunks
from nexus_audit.output.table import _wrap
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


def test_json_comes_in_pieces_that_make_the_report_dict(
        rich: Report, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI writes JSON as it is encoded: the pieces joined are the indented report
    JSON (a year's report never sits whole in memory); the other formats come whole."""
    monkeypatch.setattr(render_module, "JSON_CHUNK", 256)
    pieces = list(render_chunks(rich, "json"))
    assert len(pieces) > 3
    assert "".join(pieces) == json.dumps(rich.to_json_dict(), indent=2,
                                         ensure_ascii=False) + "\n"
    assert len(list(render_chunks(rich, "table"))) == 1
    with pytest.raises(UsageError):
        render_chunks(rich, "xml")  # at once, before any piece is written


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


def _column(text: str, header: str, index: int) -> list[str]:
    """The pieces of column ``index`` of the table whose header line reads ``header``
    (spaces aside), one per line (spans read off the dashes under the header)."""
    lines = text.splitlines()
    at = next(n for n, line in enumerate(lines) if line.split() == header.split())
    spans, col = [], 0
    for run in lines[at + 1].split("  "):
        spans.append((col, col + len(run)))
        col += len(run) + 2
    start, end = spans[index]
    pieces = []
    for line in lines[at + 2:]:
        if not line.strip() or line.lstrip().startswith(("≤:", "*:")):  # footnotes
            break
        pieces.append(line[start:end].strip())
    return [p for p in pieces if p]


def test_table_wraps_long_values_and_never_cuts_one(rich: Report) -> None:
    """When a table must shrink to 80 columns, long ids and changes wrap onto more lines
    and keep every character (a cut "public-read…" could be "public-read-write"); times,
    sizes and a bucket's access stay on one line, whole."""
    long_id = "bk_staging-uploads-with-a-long-name-01"
    since = T0 + timedelta(minutes=7, seconds=34)
    report = replace(
        rich,
        public_buckets=(PublicBucket(id=long_id, region="ap-southeast-1", access="public-read",
                                     size_bytes=484 * 10**9, public_since=since,
                                     account="acme", at_least=True),),
        exposures=(Exposure(id=long_id, access="authenticated-read", start=since,
                            end=since + timedelta(hours=1), account="acme", at_least=True),),
        drift=(Drift(kind="bucket", id=long_id, change="changed", field="access",
                     old="private", new="public-read-write", observed_at=since,
                     account="acme"),
               Drift(kind="instance", id="i-web", change="changed", field="tags",
                     old={"env": "prod"}, new={"env": "prod", "owner": "platform-team"},
                     observed_at=since, account="acme")))
    text = render(report, "table")
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    assert text.count("≤ 2026-03-01T00:07:34Z") == 2  # public since, exposure start
    assert "2026-03-01T01:07:34Z" in text  # exposure end
    assert "484.0 GB" in text
    public = "bucket access region size public since"
    assert "".join(_column(text, public, 0)) == long_id
    assert _column(text, public, 1) == ["public-read"]  # access never wraps
    assert "".join(_column(text, "bucket access start end", 0)) == long_id
    drift = "observed kind id change field old → new"
    assert "".join(_column(text, drift, 2)) == long_id + "i-web"
    changes = " ".join(_column(text, drift, 5))
    assert changes.replace(" ", "") == (
        'private→public-read-write{"env":"prod"}→{"env":"prod","owner":"platform-team"}')
    assert "private →" in changes


def test_wrap_breaks_at_spaces_then_hyphens_then_anywhere() -> None:
    """The wrap behind the table: spaces first, then after a hyphen, dot or slash; a word
    wider than the column starts its own line and runs on; nothing but the spaces at
    breaks is dropped."""
    assert _wrap("private → public-read", 21) == ["private → public-read"]
    assert _wrap("private → public-read", 12) == ["private →", "public-read"]
    assert _wrap("private → public-read", 8) == ["private", "→", "public-", "read"]
    assert _wrap("a → bk_staging-uploads-01", 10) == ["a →", "bk_staging", "-uploads-",
                                                      "01"]
    assert _wrap("bucket.public_too_large", 17) == ["bucket.", "public_too_large"]
    assert _wrap("bk_staging-uploads-01", 12) == ["bk_staging-", "uploads-01"]
    assert _wrap("inst_1ad76zu9", 5) == ["inst_", "1ad76", "zu9"]
    assert _wrap("", 4) == [""]


def test_unknown_format_is_usage_error(rich: Report) -> None:
    """An unknown format is a usage error naming the choices."""
    with pytest.raises(UsageError, match="table, json, markdown, csv"):
        render(rich, "xml")
