"""Markdown fit to paste into a compliance ticket: cells cannot break a row or carry HTML."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from nexus_audit.audit.report import Report
from nexus_audit.domain import escape
from nexus_audit.domain.timeutil import isoformat
from nexus_audit.output import citation
from nexus_audit.output.cells import fmt_money, fmt_value


def _md_cell(value: Any) -> str:
    return escape.markdown(fmt_value(value))


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: Report) -> str:
    """The report as Markdown, fit to paste into a compliance ticket (no row dropped)."""
    d = report.to_json_dict()
    c = report.crawls
    out = [f"# nexus-audit report: {d['window']['since']} to {d['window']['until']}", "",
           f"- Accounts: {escape.markdown(', '.join(report.accounts))}",
           f"- Generated: {d['generated_at']}",
           f"- Prices: {_md_cell(report.pricing.get('name'))} as of "
           f"{_md_cell(report.pricing.get('as_of'))}, "
           f"sha256 `{_md_cell(report.pricing.get('digest'))}`",
           f"- Evidence: chain head `{citation.chain_head(report.evidence)}` "
           "(check with `nexus-audit verify`)", "",
           "## Crawls and coverage", "",
           f"- Crawls: {c.count} ({c.succeeded} succeeded, {c.failed} failed)",
           f"- Last success: {isoformat(c.last_success) or 'never'}",
           f"- Coverage: {c.coverage.ratio:.2%} of the window observed", ""]
    if c.coverage.gaps:
        out += _md_table(["account", "kind", "gap start", "gap end"],
                         [[g.account, g.kind, isoformat(g.start), isoformat(g.end)]
                          for g in c.coverage.gaps])
        out.append("")
    if c.clock_skews:
        out += [f"Crawls re-dated because the clock stepped back: {len(c.clock_skews)}", "",
                *_md_table(["account", "crawl", "recorded end", "moved to", "seconds"],
                           [[k.account, k.crawl_id, isoformat(k.recorded_finished_at),
                             isoformat(k.corrected_to), round(k.seconds)]
                            for k in c.clock_skews]), ""]
    inv = d["inventory"]
    out += ["## Inventory", "",
            f"- Instances: {inv['instances']['total']}"
            # Statuses and regions are API text: escaped like every table cell.
            f" (by status: {_md_cell(inv['instances']['by_status'])};"
            f" by region: {_md_cell(inv['instances']['by_region'])})",
            f"- Buckets: {inv['buckets']['total']} ({inv['buckets']['size_bytes']} bytes)", "",
            f"## Cost ({report.cost.currency})", ""]
    acc, rate = report.cost.accrued, report.cost.run_rate_hourly
    regions = sorted(set(acc.by_region) | set(rate.by_region))
    cost_rows = [["total", fmt_money(acc.total), fmt_money(rate.total)],
                 ["compute", fmt_money(acc.compute), fmt_money(rate.compute)],
                 ["storage", fmt_money(acc.storage), fmt_money(rate.storage)]]
    cost_rows += [[f"region {r}", fmt_money(acc.by_region.get(r, 0.0)),
                   fmt_money(rate.by_region.get(r, 0.0))] for r in regions]
    out += _md_table(["", "accrued", "per hour now"], cost_rows)
    out.append("")
    out += ["## Drift", ""]
    out += _md_table(["observed", "account", "kind", "id", "change", "field", "old", "new"],
                     [[isoformat(x.observed_at), x.account, x.kind, x.id, x.change, x.field,
                       x.old, x.new] for x in report.drift]) if report.drift else ["No drift."]
    out += ["", "## Public buckets", ""]
    out += _md_table(["account", "bucket", "access", "region", "size bytes", "public since",
                      "at least"],
                     [[b.account, b.id, b.access, b.region, b.size_bytes,
                       isoformat(b.public_since), "yes" if b.at_least else "no"]
                      for b in report.public_buckets]
                     ) if report.public_buckets else ["No bucket is exposed now."]
    out += ["", "## Exposures in the window", ""]
    out += _md_table(["account", "bucket", "access", "start", "at least", "end"],
                     [[e.account, e.id, e.access, isoformat(e.start),
                       "yes" if e.at_least else "no", isoformat(e.end) or "ongoing"]
                      for e in report.exposures]
                     ) if report.exposures else ["No exposure in the window."]
    out += ["", "## Stale instances", ""]
    out += _md_table(["account", "instance", "name", "status", "region", "stale since",
                      "at least", "hourly cost"],
                     [[s.account, s.id, s.name, s.status, s.region, isoformat(s.stale_since),
                       "yes" if s.at_least else "no", fmt_money(s.hourly_cost)]
                      for s in report.stale_instances]
                     ) if report.stale_instances else ["No stale instance."]
    if report.findings is not None:
        out += ["", "## Policy findings", ""]
        out += _md_table(["account", "rule", "severity", "status", "resource", "region",
                          "first seen", "last seen", "current", "detail", "exception"],
                         [[f.account, f.rule, f.severity, f.status, f.resource, f.region,
                           isoformat(f.first_seen), isoformat(f.last_seen),
                           "yes" if f.current else "no", f.detail,
                           "" if f.exception is None else
                           f"{f.exception.pattern} (owner {f.exception.owner}, until "
                           f"{isoformat(f.exception.expires)}: {f.exception.reason})"]
                          for f in report.findings]
                         ) if report.findings else ["No finding in the window."]
    return "\n".join(out) + "\n"
