"""Findings with history, on hand-built histories committed through the store's own API.

Crawls are hourly from ``T0`` unless a test says otherwise; intervals, statuses and
severities are worked out by hand in each docstring.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from nexus_audit.audit.findings import Finding, Run, current_counts, evaluate_history, judge
from nexus_audit.audit.report import Report
from nexus_audit.domain.policy import Policy, parse_policy
from nexus_audit.domain.timeutil import Window
from nexus_audit.history.store import Store
from tests.test_queries import T0, D, H, report
from tests.test_report import build, rich_history
from tests.test_store import bucket, crawl, inst

BASELINE = b"""
[baseline]
allowed_regions = ["eu-1", "us-1"]
required_tags = ["team", "env"]
max_stopped = "3h"
max_public_bucket_size = "10GB"
"""
TAGGED = '{"env":"prod","team":"web"}'


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A migrated, empty store."""
    s = Store(tmp_path / "findings.duckdb", lock_timeout=2.0)
    s.migrate()
    return s


def policy(extra: bytes = b"") -> Policy:
    """The test baseline plus ``extra`` (exceptions)."""
    return parse_policy(BASELINE + extra, "test-policy.toml")


def findings(store: Store, since: datetime, until: datetime, pol: Policy | None = None,
             rule: str | None = None) -> list[Finding]:
    """The findings in ``[since, until)``, optionally of one rule."""
    found = evaluate_history(store, pol or policy(), Window(since, until))
    return [f for f in found if rule is None or f.rule == rule]


def spans(found: Sequence[Finding]) -> list[tuple[str, str, datetime, datetime, bool]]:
    """(resource, status, first_seen, last_seen, current) of each finding."""
    return [(f.resource, f.status, f.first_seen, f.last_seen, f.current) for f in found]


def test_region_finding_has_its_interval_and_ends_when_fixed(store: Store) -> None:
    """i-1 sits in ap-1 at crawls 2h..4h, then moves back: one medium finding [2h, 4h]."""
    for hour in range(8):
        region = "ap-1" if 2 <= hour <= 4 else "eu-1"
        crawl(store, T0 + hour * H, instances=[inst("i-1", region=region, tags=TAGGED)])
    found = findings(store, T0, T0 + 8 * H)
    assert spans(found) == [("i-1", "open", T0 + 2 * H, T0 + 4 * H, False)]
    assert found[0].severity == "medium"
    assert found[0].region == "ap-1"
    assert found[0].detail == "region ap-1 is not an allowed region"


def test_a_finding_open_two_days_last_week_shows_in_a_30_day_report(store: Store) -> None:
    """Daily bucket crawls: public on days 20 and 21 only; a 30d window ending on day 30
    shows it with first_seen day 20, last_seen day 21; a window from day 22 does not."""
    for day in range(31):
        crawl(store, T0 + day * D,
              buckets=[bucket("b-1", access="public" if day in (20, 21) else "private")])
    found = findings(store, T0 + 30 * D - 30 * D, T0 + 30 * D + H)
    assert spans(found) == [("b-1", "open", T0 + 20 * D, T0 + 21 * D, False)]
    assert found[0].severity == "high"
    assert findings(store, T0 + 22 * D, T0 + 30 * D + H) == []
    # A window that starts inside the interval still shows all of it.
    assert spans(findings(store, T0 + 21 * D, T0 + 30 * D + H)) == spans(found)


def test_two_intervals_are_two_entries(store: Store) -> None:
    """Public at 1h-2h and again at 5h-6h (ongoing): two entries, the second current."""
    for hour in range(7):
        access = "public" if hour in (1, 2, 5, 6) else "private"
        crawl(store, T0 + hour * H, buckets=[bucket("b-1", access=access)])
    assert spans(findings(store, T0, T0 + 7 * H)) == [
        ("b-1", "open", T0 + H, T0 + 2 * H, False),
        ("b-1", "open", T0 + 5 * H, T0 + 6 * H, True)]


def test_a_resource_that_disappears_and_returns_starts_a_new_interval(store: Store) -> None:
    """b-1 (public) is gone at the 2h crawl and back at 3h: [0h, 1h] and [3h, 4h]."""
    for hour in range(5):
        crawl(store, T0 + hour * H,
              buckets=[bucket("b-1", access="public")] if hour != 2 else [])
    assert spans(findings(store, T0, T0 + 5 * H)) == [
        ("b-1", "open", T0, T0 + H, False), ("b-1", "open", T0 + 3 * H, T0 + 4 * H, True)]


def test_changes_that_keep_breaking_the_rule_keep_one_interval(store: Store) -> None:
    """Access public → public-read → Authenticated-Read (fail closed): one interval, the
    detail of the last version; a failed crawl in between changes nothing."""
    accesses = ["public", "public-read", "public-read", "Authenticated-Read"]
    for hour, access in enumerate(accesses):
        crawl(store, T0 + hour * H, buckets=[bucket("b-1", access=access)])
    crawl(store, T0 + 4 * H, buckets=[bucket("b-1")], failed=True)
    found = findings(store, T0, T0 + 5 * H)
    assert spans(found) == [("b-1", "open", T0, T0 + 3 * H, True)]
    assert found[0].detail == "access Authenticated-Read"


def test_required_tags(store: Store) -> None:
    """i-1 lacks env until 3h; an empty value counts as missing; i-2 is always tagged."""
    tags = ['{"team":"web"}', '{"team":"web"}', '{"env":"","team":"web"}', TAGGED, TAGGED]
    for hour, tag in enumerate(tags):
        crawl(store, T0 + hour * H, instances=[inst("i-1", tags=tag), inst("i-2", tags=TAGGED)])
    found = findings(store, T0, T0 + 5 * H, rule="instance.required_tags")
    assert spans(found) == [("i-1", "open", T0, T0 + 2 * H, False)]
    assert found[0].detail == "missing tags: env"
    assert found[0].severity == "low"


def test_stopped_too_long(store: Store) -> None:
    """max_stopped 3h. i-1 stops at 1h (tags change while stopped): a finding from the
    first crawl at least 3h later (4h) to 5h, ending when it runs again at 6h. i-2 stops
    for two hours only: no finding. i-3 is stopped from the first crawl on: counted from
    that crawl (0h + 3h), still current at the end."""
    for hour in range(8):
        i1 = inst("i-1", status="stopped" if 1 <= hour <= 5 else "running",
                  tags=TAGGED if hour < 3 else '{"env":"prod","team":"ops"}')
        i2 = inst("i-2", status="stopped" if hour in (2, 3) else "running", tags=TAGGED)
        i3 = inst("i-3", status="stopped", tags=TAGGED)
        crawl(store, T0 + hour * H, instances=[i1, i2, i3])
    found = findings(store, T0, T0 + 8 * H, rule="instance.stopped_too_long")
    assert spans(found) == [("i-3", "open", T0 + 3 * H, T0 + 7 * H, True),
                            ("i-1", "open", T0 + 4 * H, T0 + 5 * H, False)]
    assert found[1].detail == "stopped since 2026-03-01T01:00:00Z"


def test_stopped_too_long_waits_for_a_crawl_past_the_threshold(store: Store) -> None:
    """Crawls at 0h, 2h, 5h; stopped throughout, max 3h: due at 3h, first seen at 5h."""
    for hour in (0, 2, 5):
        crawl(store, T0 + hour * H, instances=[inst("i-1", status="stopped", tags=TAGGED)])
    assert spans(findings(store, T0, T0 + 6 * H, rule="instance.stopped_too_long")) == [
        ("i-1", "open", T0 + 5 * H, T0 + 5 * H, True)]


def test_public_too_large(store: Store) -> None:
    """b-1 is public throughout and grows past 10 GB at 2h: critical from 2h until it
    turns private at 4h. b-2 is 20 GB but private: no finding. b-3 is large and public
    at 1h only."""
    for hour in range(6):
        crawl(store, T0 + hour * H, buckets=[
            bucket("b-1", access="public" if hour < 4 else "private",
                   size=(5 + 3 * hour) * 10**9),
            bucket("b-2", size=20 * 10**9),
            bucket("b-3", access="public" if hour == 1 else "private", size=11 * 10**9)])
    found = findings(store, T0, T0 + 6 * H, rule="bucket.public_too_large")
    assert spans(found) == [("b-3", "open", T0 + H, T0 + H, False),
                            ("b-1", "open", T0 + 2 * H, T0 + 3 * H, False)]
    assert {f.severity for f in found} == {"critical"}
    assert found[1].detail == "access public, 14000000000 bytes"


def test_an_exception_expiring_inside_the_window_splits_the_interval(store: Store) -> None:
    """site-a is public at every crawl 0h..5h; its exception lapses at 2h30: accepted
    [0h, 2h] (not current), then expired [3h, 5h] (current), severity high → critical."""
    for hour in range(6):
        crawl(store, T0 + hour * H, buckets=[bucket("site-a", access="public-read")])
    pol = policy(b"""
[[exceptions]]
bucket = "site-a"
reason = "static website"
owner = "web@example.com"
expires = 2026-03-01T02:30:00Z
""")
    found = findings(store, T0, T0 + 6 * H, pol)
    assert spans(found) == [("site-a", "accepted", T0, T0 + 2 * H, False),
                            ("site-a", "expired", T0 + 3 * H, T0 + 5 * H, True)]
    assert [f.severity for f in found] == ["high", "critical"]
    assert all(f.exception is pol.exceptions[0] for f in found)
    # Judged at last_seen: a window ending before the expiry sees it accepted and current.
    assert spans(findings(store, T0, T0 + 2 * H + timedelta(minutes=1), pol)) == [
        ("site-a", "accepted", T0, T0 + 2 * H, True)]


def test_a_pattern_exception_covers_matching_buckets_of_its_account(store: Store) -> None:
    """dl-* in account prod accepts dl-1 and dl-2 of prod, not dl-1 of staging nor x-dl."""
    for account in ("prod", "staging"):
        crawl(store, T0, account=account, buckets=[
            bucket("dl-1", access="public"), bucket("dl-2", access="public"),
            bucket("x-dl", access="public")])
    pol = policy(b"""
[[exceptions]]
bucket = "dl-*"
account = "prod"
reason = "downloads"
owner = "platform@example.com"
expires = 2027-01-01
""")
    found = findings(store, T0 - H, T0 + H, pol)
    status = {(f.account, f.resource): f.status for f in found}
    assert status == {("prod", "dl-1"): "accepted", ("prod", "dl-2"): "accepted",
                      ("prod", "x-dl"): "open", ("staging", "dl-1"): "open",
                      ("staging", "dl-2"): "open", ("staging", "x-dl"): "open"}


def test_an_exception_does_not_cover_other_rules(store: Store) -> None:
    """An exception for bucket.public leaves the large bucket's size finding open."""
    crawl(store, T0, buckets=[bucket("site-a", access="public", size=50 * 10**9)])
    pol = policy(b'[[exceptions]]\nbucket = "site-a"\nreason = "r"\nowner = "o"\n'
                 b"expires = 2027-01-01\n")
    status = {f.rule: f.status for f in findings(store, T0 - H, T0 + H, pol)}
    assert status == {"bucket.public": "accepted", "bucket.public_too_large": "open"}


def test_window_end_in_the_past_judges_as_of_then(store: Store) -> None:
    """With until at 2h30, a bucket made private at 4h is still current; later crawls
    are not seen."""
    for hour in range(6):
        crawl(store, T0 + hour * H,
              buckets=[bucket("b-1", access="public" if hour < 4 else "private")])
    assert spans(findings(store, T0, T0 + 2 * H + H / 2)) == [
        ("b-1", "open", T0, T0 + 2 * H, True)]


def test_bucket_only_crawls_leave_instance_findings_alone(store: Store) -> None:
    """Instance crawls at 0h and 3h, bucket crawls every hour: the region finding spans
    the two instance crawls only."""
    for hour in range(4):
        crawl(store, T0 + hour * H, buckets=[bucket("b-1")],
              instances=[inst("i-1", region="ap-1", tags=TAGGED)] if hour in (0, 3) else None)
    assert spans(findings(store, T0, T0 + 4 * H, rule="instance.region")) == [
        ("i-1", "open", T0, T0 + 3 * H, True)]


def test_judge_splits_exactly_at_the_expiry() -> None:
    """A crawl at the expiry instant is already expired; a run wholly after it is expired."""
    pol = policy(b'[[exceptions]]\nbucket = "b"\nreason = "r"\nowner = "o"\n'
                 b"expires = 2026-03-01T02:00:00Z\n")
    times = [T0 + h * H for h in range(5)]
    run = Run(rule="bucket.public", account="a", resource="b", region="eu-1", from_crawl=1,
              until_crawl=None, detail="access public")
    parts = judge(run, times, 0, 5, pol)
    assert [(p.status, p.first_seen, p.last_seen) for p in parts] == [
        ("accepted", T0, T0 + H), ("expired", T0 + 2 * H, T0 + 4 * H)]
    assert [p.status for p in judge(run, times, 3, 5, pol)] == ["expired"]
    assert [p.status for p in judge(run, times, 0, 2, pol)] == ["accepted"]
    with pytest.raises(ValueError, match="at least one crawl"):
        judge(run, times, 2, 2, pol)


def test_current_counts_have_a_zero_series_per_enabled_rule() -> None:
    """Counts hold current findings only, with zeros for every rule, status and account."""
    pol = parse_policy(b'[baseline]\nallowed_regions = ["eu-1"]\n', "p.toml")
    run = Run(rule="instance.region", account="a", resource="i-1", region="ap-1",
              from_crawl=1, until_crawl=None, detail="")
    current = judge(run, [T0], 0, 1, pol)
    ended = judge(Run(rule="bucket.public", account="a", resource="b", region="eu-1",
                      from_crawl=1, until_crawl=2, detail=""), [T0], 0, 1, pol)
    counts = current_counts([*current, *ended], pol, ["a", "b"])
    assert counts[("a", "instance.region", "medium", "open")] == 1
    assert counts[("a", "bucket.public", "high", "open")] == 0
    assert counts[("b", "bucket.public", "critical", "expired")] == 0
    assert counts[("b", "instance.region", "medium", "open")] == 0
    assert ("a", "instance.region", "high", "expired") not in counts
    assert len(counts) == 2 * (3 + 1)


def test_report_without_a_policy_has_no_findings_key(tmp_path: Path) -> None:
    """No policy: the report JSON is unchanged (the golden test guards it byte for byte)."""
    store = Store(tmp_path / "rich.duckdb")
    store.migrate()
    rich_history(store)
    plain = build(store)
    assert plain.findings is None
    assert "findings" not in plain.to_json_dict()


def test_report_with_a_policy_carries_findings(tmp_path: Path) -> None:
    """With a policy, build_report adds findings; the JSON keys follow DESIGN.md."""
    store = Store(tmp_path / "rich.duckdb")
    store.migrate()
    rich_history(store)
    pol = parse_policy(b'[[exceptions]]\nbucket = "b-odd"\nreason = "r"\nowner = "o"\n'
                       b"expires = 2026-03-01T10:30:00Z\n", "p.toml")
    with_policy: Report = report_with(store, pol)
    data = json.loads(json.dumps(with_policy.to_json_dict()))
    assert list(data)[-1] == "findings"
    rows = {(f["resource"], f["status"]): f for f in data["findings"]}
    # b-site public-read at hours 4..9; b-odd always exposed, accepted until 10:30.
    assert rows[("b-site", "open")]["first_seen"] == "2026-03-01T04:00:00Z"
    assert rows[("b-site", "open")]["last_seen"] == "2026-03-01T09:00:00Z"
    assert rows[("b-odd", "accepted")]["exception"] == {
        "pattern": "b-odd", "owner": "o", "reason": "r", "expires": "2026-03-01T10:30:00Z"}
    assert rows[("b-odd", "expired")]["first_seen"] == "2026-03-01T11:00:00Z"
    assert rows[("b-odd", "expired")]["severity"] == "critical"
    for f in data["findings"]:
        assert {"rule", "severity", "resource", "account", "status", "first_seen",
                "last_seen"} <= set(f)


def report_with(store: Store, pol: Policy) -> Report:
    """The rich history's report window, with a policy."""
    from nexus_audit.audit.report import build_report
    from tests.test_queries import PRICES

    return build_report(store, Window(T0 + H, T0 + 12 * H), stale_after=6 * H,
                        pending_stale_after=H, max_gap_instances=2 * H,
                        max_gap_buckets=2 * H, pricing=PRICES, now=T0 + 12 * H, policy=pol)


def test_report_helper_is_unchanged_by_policies(store: Store) -> None:
    """The queries' own report helper still builds (no policy argument needed)."""
    crawl(store, T0, buckets=[bucket("b-1", access="public")])
    assert report(store, T0 - H, T0 + H).findings is None


def test_findings_over_an_exported_parquet_history_equal_the_database(
        store: Store, tmp_path: Path) -> None:
    """The findings queries run unchanged on the Parquet export (report.History seam)."""
    from nexus_audit.history.parquet import ParquetHistory, export_history

    for hour in range(6):
        crawl(store, T0 + hour * H,
              instances=[inst("i-1", region="ap-1" if hour < 3 else "eu-1", tags=TAGGED)],
              buckets=[bucket("site-a", access="public", size=(9 + hour) * 10**9)])
    pol = policy(b'[[exceptions]]\nbucket = "site-*"\nreason = "r"\nowner = "o"\n'
                 b"expires = 2026-03-01T02:30:00Z\n")
    window = Window(T0, T0 + 6 * H)
    export_history(store, tmp_path / "lake", window)
    expected = evaluate_history(store, pol, window)
    assert {f.rule for f in expected} == {"instance.region", "bucket.public",
                                          "bucket.public_too_large"}
    assert evaluate_history(ParquetHistory(tmp_path / "lake"), pol, window) == expected
