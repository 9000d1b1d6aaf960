"""How every output format cites the evidence chain (``report.evidence``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from nexus_audit.history.evidence import Evidence


def chain_head(evidence: Evidence | None) -> str:
    """The chain head a report cites, or why there is none."""
    head = evidence.chain_head if evidence else None
    return head or "none (no manifest sealed before the window's end)"


def csv_rows(report_json: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The CSV ``evidence`` section's cells: the chain head, then each cited manifest."""
    evidence = report_json.get("evidence") or {}
    yield {"metric": "chain_head", "value": evidence.get("chain_head")}
    for e in evidence.get("crawls", ()):
        yield {"account": e["account"], "id": e["crawl_id"], "start": e["finished_at"],
               "metric": "manifest", "value": e["manifest"]}
