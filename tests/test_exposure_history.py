"""Exposure history with per-kind schedules: bucket polls set its start and end."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from nexus_audit.store import Store
from tests.test_queries import T0, H, report
from tests.test_store import bucket, crawl, inst

M = timedelta(minutes=1)


def test_exposure_bounds_come_from_bucket_polls_between_instance_crawls(
        tmp_path: Path) -> None:
    """An exposure starts at the first bucket poll that saw it and ends at the first that
    saw it private (a one-minute resolution); instance crawls and a failed poll in between
    neither end nor move it, and instances keep their own history."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    crawl(store, T0, instances=[inst("i-1")], buckets=[bucket("b-1")])
    for minute in range(1, 30):
        public = 7 <= minute < 19
        crawl(store, T0 + minute * M, failed=minute == 12,
              buckets=[bucket("b-1", access="public" if public else "private")])
        if minute == 10:
            crawl(store, T0 + minute * M + timedelta(seconds=20), instances=[])
    d = report(store, T0, T0 + H).to_json_dict()
    assert d["exposures"] == [{"id": "b-1", "access": "public", "account": "acme",
                               "start": "2026-03-01T00:07:00Z",
                               "end": "2026-03-01T00:19:00Z"}]
    # The instance-only crawl at 0:10:20 removed i-1; the bucket polls did not.
    assert [(x["id"], x["change"], x["observed_at"]) for x in d["drift"]
            if x["kind"] == "instance"] == [("i-1", "removed", "2026-03-01T00:10:20Z")]
