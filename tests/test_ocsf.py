"""OCSF output: every event satisfies the OCSF 1.1.0 Compliance Finding class definition.

``CLASS_1_1_0`` below is transcribed from the schema (https://schema.ocsf.io/1.1.0/classes/
compliance_finding, with the ``cloud`` profile): the required attributes of the event and
of each object used, and the enumerations of the ids we set. It is kept here, apart from
``nexus_audit/ocsf.py``, so the check does not restate the code it checks.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nexus_audit import __version__
from nexus_audit.audit.findings import Finding
from nexus_audit.cli import main
from nexus_audit.domain.policy import parse_policy
from nexus_audit.history.store import Store
from nexus_audit.output.ocsf import event, finding_uid, render_ocsf
from tests.test_findings import report_with
from tests.test_queries import T0, H
from tests.test_report import rich_history

CLASS_1_1_0: dict[str, Any] = {
    "class_uid": 2003,
    "category_uid": 2,
    # Base event (activity_id, category_uid, class_uid, metadata, severity_id, time,
    # type_uid), Compliance Finding (compliance, finding_info), cloud profile (cloud).
    "required": {"activity_id", "category_uid", "class_uid", "metadata", "severity_id",
                 "time", "type_uid", "compliance", "finding_info", "cloud"},
    "objects": {
        "metadata": {"product", "version"},
        "metadata.product": {"vendor_name"},
        "finding_info": {"title", "uid"},
        "compliance": {"standards"},
        "cloud": {"provider"},
    },
    "enums": {
        "activity_id": {0: "Unknown", 1: "Create", 2: "Update", 3: "Close", 99: "Other"},
        "severity_id": {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High",
                        5: "Critical", 6: "Fatal", 99: "Other"},
        "status_id": {0: "Unknown", 1: "New", 2: "In Progress", 3: "Suppressed",
                      4: "Resolved", 99: "Other"},
        "compliance.status_id": {0: "Unknown", 1: "Pass", 2: "Warning", 3: "Fail",
                                 99: "Other"},
    },
    "timestamps": {"time", "finding_info.first_seen_time", "finding_info.last_seen_time"},
}


def lookup(event_: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted path of an event (None if absent)."""
    node: Any = event_
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def violations(e: dict[str, Any]) -> list[str]:
    """Everything in ``e`` that breaks the transcribed class definition."""
    problems = [f"missing {name}" for name in CLASS_1_1_0["required"] if name not in e]
    for obj, required in CLASS_1_1_0["objects"].items():
        value = lookup(e, obj)
        if not isinstance(value, dict):
            problems.append(f"{obj} is not an object")
            continue
        problems += [f"missing {obj}.{name}" for name in required
                     if value.get(name) in (None, "", [])]
    for name, values in CLASS_1_1_0["enums"].items():
        value = lookup(e, name)
        if value not in values:
            problems.append(f"{name}={value!r} is not in the enumeration")
            continue
        caption = lookup(e, name.removesuffix("_id"))
        if caption is not None and caption != values[value]:
            problems.append(f"{name}={value} has caption {caption!r}, not {values[value]!r}")
    if e.get("class_uid") != CLASS_1_1_0["class_uid"]:
        problems.append("wrong class_uid")
    if e.get("category_uid") != CLASS_1_1_0["category_uid"]:
        problems.append("wrong category_uid")
    if e.get("type_uid") != e.get("class_uid", 0) * 100 + e.get("activity_id", 0):
        problems.append("type_uid is not class_uid * 100 + activity_id")
    for name in CLASS_1_1_0["timestamps"]:
        value = lookup(e, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 10**12:
            problems.append(f"{name} is not a timestamp_t in milliseconds: {value!r}")
    if not isinstance(e.get("resources"), list) or not all(
            isinstance(r, dict) and r.get("uid") for r in e["resources"]):
        problems.append("resources is not an array of resource_details with uid")
    if lookup(e, "metadata.version") != "1.1.0":
        problems.append("metadata.version is not the documented 1.1.0")
    return problems


@pytest.fixture
def rich_findings(tmp_path: Path) -> tuple[Finding, ...]:
    """The rich history judged by a policy with every rule and an expiring exception."""
    store = Store(tmp_path / "rich.duckdb")
    store.migrate()
    rich_history(store)
    pol = parse_policy(b"""
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
    found = report_with(store, pol).findings
    assert found is not None
    return found


def test_every_event_satisfies_the_class_definition(rich_findings: tuple[Finding, ...]) -> None:
    """One JSON line per finding, each valid against OCSF 1.1.0 Compliance Finding."""
    lines = render_ocsf(rich_findings, product_version="9.9.9").splitlines()
    assert len(lines) == len(rich_findings)
    assert {f.status for f in rich_findings} == {"open", "accepted", "expired"}
    assert {f.rule for f in rich_findings} >= {"bucket.public", "instance.region",
                                               "instance.required_tags",
                                               "instance.stopped_too_long"}
    for line in lines:
        e = json.loads(line)
        assert violations(e) == [], e
        assert e["metadata"]["product"] == {"name": "nexus-audit", "vendor_name": "nexus-audit",
                                            "version": "9.9.9"}
        assert e["cloud"]["provider"] == "CloudNexus"


def test_the_checker_catches_broken_events(rich_findings: tuple[Finding, ...]) -> None:
    """The validation has teeth: a missing field, a bad enum or seconds are caught."""
    good = event(rich_findings[0], product_version="1")
    assert violations(good) == []
    broken = json.loads(json.dumps(good))
    del broken["finding_info"]["uid"]
    broken["severity_id"] = 7
    broken["time"] = 1_700_000_000
    broken["compliance"]["standards"] = []
    assert len(violations(broken)) == 4


def test_mapping_of_status_severity_and_activity(rich_findings: tuple[Finding, ...]) -> None:
    """accepted → Suppressed; expired → raised severity, New while current; an ended
    open finding → Close / Resolved; compliance status is always Fail."""
    events = {(f.resource, f.rule, f.status): event(f, product_version="1")
              for f in rich_findings}
    accepted = events[("b-odd", "bucket.public", "accepted")]
    assert (accepted["status_id"], accepted["activity_id"], accepted["type_uid"]) == (
        3, 3, 200303)
    assert "accepted by exception 'b-o*' (owner sec@example.com" in (
        accepted["compliance"]["status_detail"])
    expired = events[("b-odd", "bucket.public", "expired")]
    assert (expired["severity_id"], expired["severity"]) == (5, "Critical")
    assert (expired["status_id"], expired["activity_id"], expired["type_uid"]) == (
        1, 1, 200301)
    assert "expired at 2026-03-01T10:30:00Z" in expired["compliance"]["status_detail"]
    assert expired["unmapped"]["nexus_audit"]["status"] == "expired"
    ended = events[("b-site", "bucket.public", "open")]
    assert (ended["status_id"], ended["activity_id"]) == (4, 3)
    assert ended["finding_info"]["first_seen_time"] == int(
        datetime(2026, 3, 1, 4, tzinfo=UTC).timestamp() * 1000)
    assert ended["resources"] == [{"uid": "b-site", "type": "CloudNexus Bucket",
                                   "region": "us-1"}]
    assert {e["compliance"]["status"] for e in events.values()} == {"Fail"}
    assert all(e["compliance"]["control"] == rule for (_, rule, _), e in events.items())


def test_finding_uid_is_stable_and_depends_on_first_seen(
        rich_findings: tuple[Finding, ...]) -> None:
    """The uid is a hash of rule, account, resource, first_seen: equal for equal input."""
    f = rich_findings[0]
    from dataclasses import replace

    assert finding_uid(f) == finding_uid(replace(f, last_seen=f.last_seen + H, current=False))
    assert finding_uid(f) != finding_uid(replace(f, first_seen=f.first_seen + H))
    assert len({finding_uid(x) for x in rich_findings}) == len(rich_findings)


def test_report_format_ocsf_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`report --format ocsf` prints JSON lines with a policy; without one, exit 2."""
    for name in ("NEXUS_API_KEY", "NEXUS_API_KEY_FILE", "NEXUS_AUDIT_CONFIG",
                 "NEXUS_AUDIT_PRICING", "NEXUS_AUDIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "history.duckdb"
    store = Store(db)
    store.migrate()
    rich_history(store)
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(db))
    args = ["report", "--since", (T0).isoformat(), "--until", (T0 + 12 * H).isoformat(),
            "--format", "ocsf"]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "no policy is configured" in err
    assert len(err.strip().splitlines()) == 1
    policy = tmp_path / "policy.toml"
    policy.write_text('[baseline]\nallowed_regions = ["eu-1"]\n', encoding="utf-8")
    monkeypatch.setenv("NEXUS_AUDIT_POLICY", str(policy))
    assert main(args) == 0
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert events
    assert all(violations(e) == [] for e in events)
    assert {e["finding_info"]["types"][0] for e in events} == {"bucket.public",
                                                               "instance.region"}
    assert {e["metadata"]["product"]["version"] for e in events} == {__version__}


def test_events_cite_the_chain_head(rich_findings: tuple[Finding, ...]) -> None:
    """With the report's chain head, every event carries it in metadata.labels and in
    unmapped, and still satisfies the class definition."""
    head = "ab" * 32
    for line in render_ocsf(rich_findings, product_version="9.9.9",
                            chain_head=head).splitlines():
        e = json.loads(line)
        assert violations(e) == [], e
        assert e["metadata"]["labels"] == [f"nexus-audit-chain-head:{head}"]
        assert e["unmapped"]["nexus_audit"]["chain_head"] == head
