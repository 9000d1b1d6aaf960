"""CSV with a section column: every row of every section; text cells cannot start a
formula (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io
from typing import Any, Final

from nexus_audit.audit.report import Report
from nexus_audit.domain import escape
from nexus_audit.output import citation
from nexus_audit.output.cells import fmt_value

CSV_COLUMNS: Final = ("section", "account", "kind", "id", "name", "status", "region",
                      "access", "change", "field", "old", "new", "start", "end", "at_least",
                      "metric", "value")


#: Columns added after CSV_COLUMNS when a policy is configured (``finding`` rows).
CSV_FINDING_COLUMNS: Final = ("rule", "severity", "current", "detail", "exception",
                              "exception_owner", "exception_reason", "exception_expires")


def render_csv(report: Report) -> str:
    """The report as one CSV table; ``section`` says what each row is (no row dropped)."""
    d = report.to_json_dict()
    buffer = io.StringIO()
    columns = CSV_COLUMNS if report.findings is None else CSV_COLUMNS + CSV_FINDING_COLUMNS
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()

    def row(section: str, **cells: Any) -> None:
        # Text that a spreadsheet would run as a formula is neutralised; numbers are not.
        writer.writerow({"section": section, **{k: "" if v is None else escape.csv_cell(
                         fmt_value(v) if isinstance(v, (dict, list)) else v)
                         for k, v in cells.items()}})

    crawls = d["crawls"]
    for metric in ("count", "succeeded", "failed", "last_success"):
        row("crawls", metric=metric, value=crawls[metric])
    for metric in ("covered_seconds", "window_seconds", "ratio"):
        row("coverage", metric=metric, value=crawls["coverage"][metric])
    for g in crawls["coverage"]["gaps"]:
        row("coverage_gap", account=g["account"], kind=g["kind"], start=g["start"],
            end=g["end"])
    for k in crawls["clock_skews"]:
        row("clock_skew", account=k["account"], id=k["crawl_id"], metric="seconds",
            start=k["recorded_finished_at"], end=k["corrected_to"], value=k["seconds"])
    inv = d["inventory"]
    for status, n in inv["instances"]["by_status"].items():
        row("inventory", kind="instance", status=status, metric="count", value=n)
    for region, n in inv["instances"]["by_region"].items():
        row("inventory", kind="instance", region=region, metric="count", value=n)
    row("inventory", kind="bucket", metric="count", value=inv["buckets"]["total"])
    row("inventory", kind="bucket", metric="size_bytes", value=inv["buckets"]["size_bytes"])
    for part in ("accrued", "run_rate_hourly"):
        amounts = d["cost"][part]
        for metric in ("total", "compute", "storage"):
            row("cost", metric=f"{part}.{metric}", value=amounts[metric])
        for region, value in amounts["by_region"].items():
            row("cost", region=region, metric=f"{part}.by_region", value=value)
    for x in d["drift"]:
        row("drift", account=x["account"], kind=x["kind"], id=x["id"], change=x["change"],
            field=x["field"], old=x["old"], new=x["new"], start=x["observed_at"])
    for b in d["public_buckets"]:
        row("public_bucket", account=b["account"], kind="bucket", id=b["id"],
            region=b["region"], access=b["access"], start=b["public_since"],
            at_least=str(b["at_least"]).lower(), metric="size_bytes", value=b["size_bytes"])
    for e in d["exposures"]:
        row("exposure", account=e["account"], kind="bucket", id=e["id"], access=e["access"],
            start=e["start"], end=e["end"], at_least=str(e["at_least"]).lower())
    for s in d["stale_instances"]:
        row("stale_instance", account=s["account"], kind="instance", id=s["id"],
            name=s["name"], status=s["status"], region=s["region"], start=s["stale_since"],
            at_least=str(s["at_least"]).lower(), metric="hourly_cost", value=s["hourly_cost"])
    row("pricing", metric="name", value=d["pricing"].get("name"))
    row("pricing", metric="as_of", value=d["pricing"].get("as_of"))
    row("pricing", metric="digest", value=d["pricing"].get("digest"))
    for cells in citation.csv_rows(d):
        row("evidence", **cells)
    for f in d.get("findings", ()):
        exc = f["exception"] or {}
        row("finding", account=f["account"], kind=f["kind"], id=f["resource"],
            status=f["status"], region=f["region"], start=f["first_seen"], end=f["last_seen"],
            rule=f["rule"], severity=f["severity"], current=str(f["current"]).lower(),
            detail=f["detail"], exception=exc.get("pattern"),
            exception_owner=exc.get("owner"), exception_reason=exc.get("reason"),
            exception_expires=exc.get("expires"))
    return buffer.getvalue()
