"""The 80-column table: shortens long lists ("… and N more") and wraps long cells onto
more lines, never cutting a value; control characters show as visible escapes."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Final, TypeVar

from nexus_audit.audit.findings import summary
from nexus_audit.audit.report import Report
from nexus_audit.domain import escape
from nexus_audit.domain.timeutil import isoformat
from nexus_audit.output import citation
from nexus_audit.output.cells import fmt_money, fmt_since, fmt_size, fmt_value

_T = TypeVar("_T")

WIDTH: Final = 80
TABLE_ROWS: Final = 10


def _pieces(word: str) -> list[str]:
    """``word`` cut after each hyphen, dot or slash: the places a name or a rule can break
    and still read (not underscores: ids such as ``inst_1ad76zu9`` read as one)."""
    return _BREAKABLE.findall(word) or [word]


_BREAKABLE: Final = re.compile(r"[^-./]*[-./]|[^-./]+")


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width``: broken at spaces, else after a hyphen (or
    dot, slash), else anywhere. No character is dropped but the spaces at the breaks."""
    if len(text) <= width:
        return [text]
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) <= width:
            line += " " + word
            continue
        if line:
            lines.append(line)
            line = ""
        for piece in _pieces(word):
            if len(line) + len(piece) <= width:
                line += piece
                continue
            if line:
                lines.append(line)
            while len(piece) > width:
                lines.append(piece[:width])
                piece = piece[width:]
            line = piece
    lines.append(line)
    return lines


def _longest(text: str) -> int:
    """The widest part of ``text`` that cannot break (at spaces, or after hyphens, dots
    and slashes)."""
    return max(len(p) for w in text.split(" ") for p in _pieces(w))


def _indented(text: str, indent: int, width: int = WIDTH) -> list[str]:
    """A line of ``text`` (escaped for the terminal) wrapped to ``width``, later lines
    indented by ``indent``."""
    text = escape.terminal(text)
    if len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, subsequent_indent=" " * indent, break_on_hyphens=False)


def _grid(headers: Sequence[str], items: Sequence[_T], row: Callable[[_T], Sequence[str]],
          max_rows: int, width: int = WIDTH, *, keep: Collection[int] = ()) -> list[str]:
    """A plain-text table of the first ``max_rows`` of ``items`` (each made a row by
    ``row``; the others are only counted) that fits ``width``: columns shrink (except those
    in ``keep``: times, sizes and a bucket's access, which must read at a glance), and a
    cell wider than its column wraps onto the next lines, within the column. Cells are
    escaped for the terminal first, so widths count what is shown."""
    shown = [[escape.terminal(c) for c in row(item)] for item in items[:max_rows]]
    cols = len(headers)
    widths = [max([len(headers[i])] + [len(r[i]) for r in shown]) for i in range(cols)]
    budget = width - 2 * (cols - 1)
    shrinkable = [i for i in range(cols) if i not in keep] or list(range(cols))
    # Shrink one character at a time where the table grows by the fewest lines, then
    # wraps the fewest cells (ties: the column with the most room), as long as no word has
    # to break inside; only then break words, the widest column first.
    columns = [[headers[i], *(r[i] for r in shown)] for i in range(cols)]
    unbroken = [max(_longest(c) for c in column) for column in columns]
    heights: dict[tuple[int, int], list[int]] = {}

    def cost(i: int) -> tuple[int, int, int]:
        trial = list(widths)
        trial[i] -= 1
        for j, w in enumerate(trial):
            if (j, w) not in heights:
                heights[(j, w)] = [len(_wrap(c, w)) for c in columns[j]]
        cells = [heights[(j, w)] for j, w in enumerate(trial)]
        lines = sum(map(max, zip(*cells, strict=True)))
        wrapped = sum(h > 1 for column in cells for h in column)
        return lines, wrapped, unbroken[i] - widths[i]

    while sum(widths) > budget:
        options = [i for i in shrinkable if widths[i] > unbroken[i]]
        if not options:
            break
        widths[min(options, key=cost)] -= 1
    while sum(widths) > budget:
        widest = max(shrinkable, key=lambda i: widths[i])
        if widths[widest] <= 4:
            break
        widths[widest] -= 1
    lines = _wrapped_row(headers, widths)
    lines.append("  ".join("-" * w for w in widths))
    for cells in shown:
        lines += _wrapped_row(cells, widths)
    if len(items) > max_rows:
        lines.append(f"… and {len(items) - max_rows} more")
    return lines


def _wrapped_row(cells: Sequence[str], widths: Sequence[int]) -> list[str]:
    """One table row, as many lines as its most wrapped cell needs."""
    parts = [_wrap(c, w) for c, w in zip(cells, widths, strict=True)]
    height = max(map(len, parts))
    return ["  ".join((p[n] if n < len(p) else "").ljust(w)
                      for p, w in zip(parts, widths, strict=True)).rstrip()
            for n in range(height)]


def _pairs(items: Iterable[tuple[str, str]]) -> list[str]:
    pairs = list(items)
    key_width = max((len(k) for k, _ in pairs), default=0)
    return [line for k, v in pairs
            for line in _indented(f"  {k.ljust(key_width)}  {v}", key_width + 4)]


def _section(title: str) -> list[str]:
    return ["", title.upper(), "=" * len(title)]


def render_table(report: Report, *, max_rows: int = TABLE_ROWS) -> str:
    """The report for an 80-column terminal."""
    c = report.crawls
    cov = c.coverage
    window = report.window
    out = [*_indented(
               f"nexus-audit report  {isoformat(window.since)} → {isoformat(window.until)}", 2),
           *_indented(f"accounts: {', '.join(report.accounts)}", 10),
           *_indented(f"prices: {report.pricing.get('name')} as of "
                      f"{report.pricing.get('as_of')} "
                      f"(sha256 {report.pricing.get('digest', '')[:12]})", 8),
           *_indented(f"evidence: chain head {citation.chain_head(report.evidence)}", 10)]
    out += _section("Crawls and coverage")
    out += _pairs([("crawls", f"{c.count} ({c.succeeded} succeeded, {c.failed} failed)"),
                   ("last success", isoformat(c.last_success) or "never"),
                   ("coverage", f"{cov.ratio:.1%} of the window observed"),
                   ("gaps", str(len(cov.gaps)))])
    if cov.gaps:
        out += _grid(["account", "kind", "start", "end"], cov.gaps,
                     lambda g: [g.account, g.kind, isoformat(g.start) or "",
                                isoformat(g.end) or ""], max_rows, keep=(2, 3))
    if c.clock_skews:
        out += _pairs([("clock skews", f"{len(c.clock_skews)} re-dated (clock stepped back)")])
        out += _grid(["account", "crawl", "recorded end", "moved to", "seconds"], c.clock_skews,
                     lambda k: [k.account, str(k.crawl_id), isoformat(k.recorded_finished_at)
                                or "", isoformat(k.corrected_to) or "", str(round(k.seconds))],
                     max_rows, keep=(2, 3))
    inv = report.inventory
    out += _section("Inventory")
    out += _pairs([
        ("instances", f"{inv.instances_total}  " + ", ".join(
            f"{k} {v}" for k, v in inv.instances_by_status.items())),
        ("by region", ", ".join(f"{k} {v}" for k, v in inv.instances_by_region.items()) or "-"),
        ("buckets", f"{inv.buckets_total}  ({fmt_size(inv.buckets_size_bytes)})")])
    cost = report.cost
    out += _section(f"Cost ({cost.currency})")
    regions = sorted(set(cost.accrued.by_region) | set(cost.run_rate_hourly.by_region))
    rows = [["total", fmt_money(cost.accrued.total), fmt_money(cost.run_rate_hourly.total)],
            ["compute", fmt_money(cost.accrued.compute), fmt_money(cost.run_rate_hourly.compute)],
            ["storage", fmt_money(cost.accrued.storage), fmt_money(cost.run_rate_hourly.storage)]]
    rows += [[f"  {r}", fmt_money(cost.accrued.by_region.get(r, 0.0)),
              fmt_money(cost.run_rate_hourly.by_region.get(r, 0.0))] for r in regions]
    out += _grid(["", "accrued", "per hour now"], rows, list, len(rows))
    out += _section("Drift")
    out += _grid(["observed", "kind", "id", "change", "field", "old → new"], report.drift,
                 lambda x: [isoformat(x.observed_at) or "", x.kind, x.id, x.change,
                            x.field or "",
                            "" if x.change != "changed"
                            else (f"{fmt_value(x.old, spaced=True)} → "
                                  f"{fmt_value(x.new, spaced=True)}")],
                 max_rows, keep=(0,)) if report.drift else ["  no drift"]
    out += _section("Public buckets and exposures")
    out += _grid(["bucket", "access", "region", "size", "public since"], report.public_buckets,
                 lambda b: [b.id, b.access, b.region, fmt_size(b.size_bytes),
                            fmt_since(b.public_since, b.at_least)],
                 max_rows, keep=(1, 3, 4)) if report.public_buckets else [
                     "  no bucket is exposed now"]
    out.append("")
    out += _grid(["bucket", "access", "start", "end"], report.exposures,
                 lambda e: [e.id, e.access, fmt_since(e.start, e.at_least),
                            isoformat(e.end) or "ongoing"],
                 max_rows, keep=(1, 2, 3)) if report.exposures else ["  no exposure in the window"]
    if any(b.at_least for b in report.public_buckets) or any(
            e.at_least for e in report.exposures):
        out.append("  ≤: exposed since at least then (the first crawl saw it so)")
    out += _section("Stale instances")
    out += _grid(["instance", "name", "status", "region", "since", "per hour"],
                 report.stale_instances,
                 lambda s: [s.id, s.name, s.status, s.region, fmt_since(s.stale_since, s.at_least),
                            fmt_money(s.hourly_cost)],
                 max_rows, keep=(4,)) if report.stale_instances else ["  no stale instance"]
    if any(s.at_least for s in report.stale_instances):
        out.append("  ≤: not running since at least then (the first crawl saw it so)")
    if report.findings is not None:
        out += _table_findings(report, max_rows)
    return "\n".join(out) + "\n"


def _table_findings(report: Report, max_rows: int) -> list[str]:
    findings = report.findings or ()
    counts = summary(findings)
    out = _section("Policy findings")
    out += _pairs([("findings", f"{len(findings)} ({counts['open']} open, "
                                f"{counts['expired']} expired exception, "
                                f"{counts['accepted']} accepted)")])
    if not findings:
        return [*out, "  no finding in the window"]
    # Worst first: expired, then open, then accepted; by severity within each.
    order = {"expired": 0, "open": 1, "accepted": 2}
    ranked = sorted(findings, key=lambda f: (order[f.status], _SEVERITY_RANK[f.severity],
                                             f.first_seen))
    # Month, day and time only (the header names the window): the rows fit 80 columns.
    out += _grid(["severity", "status", "rule", "resource", "seen (UTC)"], ranked,
                 lambda f: [f.severity, f.status, f.rule, f.resource,
                            f"{f.first_seen:%m-%d %H:%M} → {f.last_seen:%m-%d %H:%M}"
                            + (" *" if f.current else "")],
                 max_rows, keep=(4,))
    out.append("  *: still seen at the window's end")
    return out


_SEVERITY_RANK: Final = {"critical": 0, "high": 1, "medium": 2, "low": 3}
