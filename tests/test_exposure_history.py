"""Exposure history with per-kind schedules: bucket polls set its start and end."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from nexus_audit.history.store import Store
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
                               "end": "2026-03-01T00:19:00Z", "at_least": False}]
    # The instance-only crawl at 0:10:20 removed i-1; the bucket polls did not.
    assert [(x["id"], x["change"], x["observed_at"]) for x in d["drift"]
            if x["kind"] == "instance"] == [("i-1", "removed", "2026-03-01T00:10:20Z")]


def test_an_exposure_seen_by_the_first_crawl_is_since_at_least_then(tmp_path: Path) -> None:
    """The first bucket crawl of an account cannot know when an exposure it sees began:
    that exposure (and the bucket's public_since) is at_least; a later one of the same
    bucket is not. Per account: another account's first crawl, an hour later, is its own.

    acme: b-1 public at 0h, private at 1h, public again from 2h (ongoing at 4h).
    beta: first crawl at 1h sees b-9 public; still public at 3h.
    """
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    for hour in range(4):
        crawl(store, T0 + hour * H, buckets=[
            bucket("b-1", access="private" if hour == 1 else "public")])
        if hour in (1, 3):
            crawl(store, T0 + hour * H + M, account="beta",
                  buckets=[bucket("b-9", access="public-read")])
    d = report(store, T0, T0 + 4 * H, accounts=["acme", "beta"]).to_json_dict()
    assert [(e["account"], e["id"], e["start"], e["end"], e["at_least"])
            for e in d["exposures"]] == [
        ("acme", "b-1", "2026-03-01T00:00:00Z", "2026-03-01T01:00:00Z", True),
        ("beta", "b-9", "2026-03-01T01:01:00Z", None, True),
        ("acme", "b-1", "2026-03-01T02:00:00Z", None, False),
    ]
    assert [(b["account"], b["id"], b["public_since"], b["at_least"])
            for b in d["public_buckets"]] == [
        ("beta", "b-9", "2026-03-01T01:01:00Z", True),
        ("acme", "b-1", "2026-03-01T02:00:00Z", False),
    ]
