"""The Grafana dashboards and provisioning: structure, references and the metric contract.

Grafana cannot run here; this checks what Grafana would trip over (ids, datasource uids,
panels without queries, overlapping panels), and that every query uses only metrics and
labels of the contract in DESIGN.md. tests/test_prometheus_e2e.py runs every query against
a real Prometheus scraping a real ``serve``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prom_fixtures import (
    DASHBOARDS,
    PANEL_COUNTS,
    dashboard_targets,
    iter_panels,
    load_dashboards,
)

ROOT = Path(__file__).resolve().parent.parent
PROVISIONING = ROOT / "grafana" / "provisioning"

#: The metric contract (DESIGN.md, issue 6): name -> labels.
CONTRACT: dict[str, frozenset[str]] = {
    name: frozenset(labels.split()) for name, labels in {
        "nexus_instances": "account region status",
        "nexus_instance_vcpus": "account region status",
        "nexus_instance_memory_bytes": "account region status",
        "nexus_buckets": "account region access",
        "nexus_buckets_size_bytes": "account region access",
        "nexus_public_buckets": "account",
        "nexus_bucket_size_bytes": "account bucket region",
        "nexus_bucket_public": "account bucket region access",
        "nexus_instance_info": "account instance name region status plan",
        "nexus_cost_hourly": "account region kind",
        "nexus_pricing_info": "name as_of currency digest",
        "nexus_stale_instances": "account status",
        "nexus_inventory_timestamp_seconds": "account kind",
        "nexus_findings": "account rule severity status",  # with a policy (issue 9)
        "nexus_audit_crawl_success": "account kind",
        "nexus_audit_crawls_total": "account kind status",
        "nexus_audit_crawl_duration_seconds_bucket": "account kind le",
        "nexus_audit_crawl_duration_seconds_sum": "account kind",
        "nexus_audit_crawl_duration_seconds_count": "account kind",
        "nexus_audit_last_success_timestamp_seconds": "account kind",
        "nexus_audit_api_requests_total": "account endpoint code",
        "nexus_audit_api_retries_total": "account endpoint reason",
        "nexus_audit_rate_limit_remaining": "account",
        "nexus_audit_rate_limit_limit": "account",
        "nexus_audit_rate_budget_requests_per_minute": "account",
        "nexus_audit_invalid_records_total": "account kind",
        "nexus_audit_total_mismatch": "account kind",
        "nexus_audit_build_info": "version",
    }.items()
}
#: Off by default (one series per instance), so no dashboard may depend on it.
OFF_BY_DEFAULT = {"nexus_instance_info"}

_METRIC = re.compile(r"\b(nexus_[a-z0-9_]+)\b")
_SELECTOR = re.compile(r"\b(nexus_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def metrics_in(expr: str) -> set[str]:
    """The nexus metric names an expression reads."""
    return set(_METRIC.findall(expr))


def selector_labels(expr: str) -> list[tuple[str, str]]:
    """(metric, label) for every label matcher in the expression's selectors."""
    return [(metric, label) for metric, body in _SELECTOR.findall(expr)
            for label in _MATCHER.findall(body)]


def grouping_labels(expr: str) -> set[str]:
    """Labels named in ``by (...)`` / ``without (...)`` clauses."""
    return {label.strip() for group in _GROUPING.findall(expr)
            for label in group.split(",") if label.strip()}


def provisioned_datasource_uids() -> set[str]:
    """The uids of the datasources Grafana's provisioning creates."""
    uids = set()
    for path in (PROVISIONING / "datasources").glob("*.yml"):
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]:
            uids.add(source["uid"])
    return uids


def datasource_refs(node: Any) -> list[Any]:
    """Every ``datasource`` value anywhere in a dashboard."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append(value)
            found.extend(datasource_refs(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(datasource_refs(item))
    return found


DASHBOARD_IDS = [path.stem for path in DASHBOARDS]


def panels_of(name: str) -> list[dict[str, Any]]:
    """The dashboard's panels, after checking it has exactly the expected number."""
    panels = list(iter_panels(load_dashboards()[name]))
    assert len(panels) == PANEL_COUNTS[name][0], f"{name}: {len(panels)} panels"
    return panels


def targets_of(name: str) -> list[tuple[str, str]]:
    """The dashboard's (panel title, expression) pairs, after checking their number."""
    targets = dashboard_targets(load_dashboards()[name])
    assert len(targets) == PANEL_COUNTS[name][1], f"{name}: {len(targets)} targets"
    return targets


def test_every_dashboard_has_its_panels() -> None:
    """Each shipped dashboard has the panels and queries the table above lists, no more,
    no fewer, and the table names exactly the shipped dashboards."""
    assert set(PANEL_COUNTS) == set(DASHBOARD_IDS)
    for name in DASHBOARD_IDS:
        assert panels_of(name)
        assert targets_of(name)


def test_the_four_dashboards_exist() -> None:
    """Fleet inventory, Cost, Security and Exporter health are shipped, each valid JSON."""
    boards = load_dashboards().values()
    titles = {board["title"] for board in boards}
    assert all(board["schemaVersion"] >= 36 for board in boards)  # Grafana 9 and later
    assert titles == {"nexus-audit / Fleet inventory", "nexus-audit / Cost",
                      "nexus-audit / Security", "nexus-audit / Exporter health"}


def test_dashboard_uids_are_unique() -> None:
    """No two dashboards share a uid (Grafana would load only one)."""
    uids = [board["uid"] for board in load_dashboards().values()]
    assert all(uids)
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_panel_ids_are_unique_and_every_panel_has_a_query(name: str) -> None:
    """Panel ids are unique, and every panel has at least one target with an expression."""
    panels = panels_of(name)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    for panel in panels:
        targets = panel.get("targets") or []
        assert targets, f"{name}: panel {panel['title']!r} has no target"
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{name}: {panel['title']!r} repeats a refId"
        for target in targets:
            assert target.get("expr", "").strip(), f"{name}: {panel['title']!r} empty query"


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_panels_fit_the_grid_without_overlapping(name: str) -> None:
    """Every panel lies inside Grafana's 24-column grid and no two panels overlap."""
    cells: dict[tuple[int, int], str] = {}
    for panel in panels_of(name):
        pos = panel["gridPos"]
        assert min(pos["w"], pos["h"], pos["x"] + 1) > 0
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_every_datasource_reference_resolves(name: str) -> None:
    """Every datasource reference names the provisioned Prometheus (or Grafana's own)."""
    uids = provisioned_datasource_uids()
    assert uids
    refs = datasource_refs(load_dashboards()[name])
    assert len(refs) >= PANEL_COUNTS[name][0]  # at least one per panel
    for ref in refs:
        assert isinstance(ref, dict), f"{name}: datasource by name, not by uid: {ref!r}"
        if ref.get("type") == "grafana":
            continue
        assert ref == {"type": "prometheus", "uid": ref["uid"]}
        assert ref["uid"] in uids, f"{name}: unknown datasource uid {ref['uid']!r}"


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_account_and_region_variables(name: str) -> None:
    """Each dashboard has ``account`` and ``region`` variables fed by label_values queries."""
    variables = {v["name"]: v for v in load_dashboards()[name]["templating"]["list"]}
    assert {"account", "region"} <= set(variables)
    for variable in (variables["account"], variables["region"]):
        query = variable["query"]["query"]
        assert re.fullmatch(r"label_values\((.+), *(\w+)\)", query), query
        assert query.endswith(f"{variable['name']})")
        assert variable["includeAll"]
        assert variable["allValue"] == ".*"


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_queries_use_only_contract_metrics_and_labels(name: str) -> None:
    """Every query reads contract metrics only, with their labels, and none off by default."""
    for title, expr in targets_of(name):
        used = metrics_in(expr)
        assert used, f"{title!r} reads no nexus metric: {expr}"
        unknown = used - CONTRACT.keys()
        assert not unknown, f"{title!r} reads metrics outside the contract: {unknown}"
        assert not used & OFF_BY_DEFAULT, f"{title!r} needs per-instance metrics (off)"
        for metric, label in selector_labels(expr):
            assert label in CONTRACT[metric], f"{title!r}: {metric} has no label {label!r}"
        available = frozenset().union(*(CONTRACT[m] for m in used))
        assert grouping_labels(expr) <= available, f"{title!r}: grouping by unknown label"


@pytest.mark.parametrize("name", DASHBOARD_IDS)
def test_queries_follow_the_account_and_region_variables(name: str) -> None:
    """A metric with an account (region) label is filtered by $account ($region)."""
    for title, expr in targets_of(name):
        for metric, body in _SELECTOR.findall(expr) + [(m, "") for m in _bare(expr)]:
            if "account" in CONTRACT[metric]:
                assert 'account=~"$account"' in body, f"{title!r}: {metric} ignores $account"
            if "region" in CONTRACT[metric]:
                assert 'region=~"$region"' in body, f"{title!r}: {metric} ignores $region"


def _bare(expr: str) -> set[str]:
    """Metrics used without any selector braces."""
    return {m for m in metrics_in(expr) if not re.search(rf"\b{m}\{{", expr)}


def test_the_helpers_see_what_they_check() -> None:
    """The regex helpers find metrics, matchers and grouping labels in a sample query."""
    expr = 'sum by (region, kind) (nexus_cost_hourly{account=~"$account", kind="compute"})'
    assert metrics_in(expr) == {"nexus_cost_hourly"}
    assert selector_labels(expr) == [("nexus_cost_hourly", "account"),
                                     ("nexus_cost_hourly", "kind")]
    assert grouping_labels(expr) == {"region", "kind"}
    assert _bare("nexus_pricing_info") == {"nexus_pricing_info"}


def test_dashboard_provider_reads_the_dashboards_folder() -> None:
    """The dashboard provider is a file provider over the folder compose.yaml mounts."""
    provider_file = next((PROVISIONING / "dashboards").glob("*.yml"))
    providers = yaml.safe_load(provider_file.read_text(encoding="utf-8"))["providers"]
    assert [p["type"] for p in providers] == ["file"]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{providers[0]['options']['path']}:ro" in mounts

