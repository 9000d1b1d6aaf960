"""Reports cite the evidence chain: the head as of the window's end in every format, and
the manifests of the crawls the report used."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest

from nexus_audit.audit.report import Report, build_report
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import Window
from nexus_audit.history.store import Store
from nexus_audit.output.render import render_chunks
from tests.test_store import T0
from tests.test_verify import build_history

HOUR = timedelta(hours=1)


def report(path: Path, since: timedelta, until: timedelta) -> Report:
    """The report of the verify tests' history over [T0 + since, T0 + until)."""
    return build_report(Store(path), Window(T0 + since, T0 + until),
                        stale_after=timedelta(days=7), pending_stale_after=HOUR,
                        max_gap_instances=2 * HOUR, max_gap_buckets=2 * HOUR,
                        pricing=load_pricing(), now=T0 + until)


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, dict[str, int], dict[int, str]]:
    """The verify tests' history and each crawl's manifest hash."""
    path = tmp_path / "history.duckdb"
    ids = build_history(path)
    with Store(path).read() as con:
        hashes = dict(con.execute("SELECT crawl_id, hash FROM manifests").fetchall())
    return path, ids, hashes


def test_evidence_cites_window_and_baseline(
        history: tuple[Path, dict[str, int], dict[int, str]]) -> None:
    """The crawls in the window and, per account and kind, the last successful one before
    it are cited with their manifests; the head is the last manifest before the end."""
    path, ids, hashes = history
    r = report(path, 2 * HOUR, 4 * HOUR + HOUR / 2)
    assert r.evidence is not None
    cited = {c.crawl_id: c.manifest for c in r.evidence.crawls}
    # In the window: failed (2h), buckets (3h), other (4h); before it: changed (instances
    # and buckets of acme), beta's only crawl.
    assert set(cited) == {ids[n] for n in ("failed", "buckets", "other", "changed", "beta")}
    assert all(cited[c] == hashes[c] for c in cited)
    assert r.evidence.chain_head == hashes[ids["other"]]
    data = r.to_json_dict()["evidence"]
    assert data["chain_head"] == hashes[ids["other"]]
    assert [c["crawl_id"] for c in data["crawls"]] == sorted(cited)


def test_every_format_shows_the_head(
        history: tuple[Path, dict[str, int], dict[int, str]]) -> None:
    """Table, Markdown, CSV and JSON all show the chain head."""
    path, ids, hashes = history
    r = report(path, 0 * HOUR, 6 * HOUR)
    head = hashes[ids["last"]]
    for fmt in ("table", "markdown", "json"):
        assert head in "".join(render_chunks(r, fmt)), fmt
    rows = list(csv.DictReader(io.StringIO("".join(render_chunks(r, "csv")))))
    evidence = [row for row in rows if row["section"] == "evidence"]
    assert evidence[0]["metric"] == "chain_head"
    assert evidence[0]["value"] == head
    assert {row["value"] for row in evidence[1:]} == set(hashes.values())
    assert json.loads("".join(render_chunks(r, "json")))["evidence"]["chain_head"] == head
