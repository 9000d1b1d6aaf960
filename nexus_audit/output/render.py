"""Render a :class:`Report`: an 80-column table, JSON, Markdown, CSV.

The table shortens long lists ("… and N more") and wraps long cells onto more lines, never
cutting a value (a cut "public-read…" could be "public-read-write"); JSON, Markdown and CSV
never drop a row. Money shows 2 decimals in the table and Markdown, 6 in JSON and CSV.

Every value is escaped for the format's reader (:mod:`nexus_audit.domain.escape`): the table's
cells show control characters as visible escapes, Markdown cells cannot break a row or
carry HTML, CSV text cannot start a formula, JSON escapes C1 controls and U+2028/U+2029.
"""

from __future__ import annotations

import csv
import io
import json
import re
import textwrap
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

from nexus_audit import __version__
from nexus_audit.audit.findings import summary
from nexus_audit.audit.report import Report
from nexus_audit.domain import escape
from nexus_audit.domain.timeutil import isoformat
from nexus_audit.errors import ConfigError, UsageError
from nexus_audit.output.ocsf import render_ocsf

_T = TypeVar("_T")

WIDTH: Final = 80
TABLE_ROWS: Final = 10
FORMATS: Final = ("table", "json", "markdown", "csv", "ocsf")


def render(report: Report, fmt: str, *, max_rows: int = TABLE_ROWS) -> str:
    """The report in ``fmt`` (``table``, ``json``, ``markdown``, ``csv`` or ``ocsf``)."""
    return "".join(render_chunks(report, fmt, max_rows=max_rows))


def render_chunks(report: Report, fmt: str, *, max_rows: int = TABLE_ROWS) -> Iterator[str]:
    """The report in ``fmt``, in pieces to write one after another (a year's JSON runs to
    tens of MB: written as it is encoded, it never sits in memory whole, nor do the
    millions of small strings the indenting encoder makes). An unknown ``fmt`` raises
    here, before any piece."""
    renderers: dict[str, Callable[[Report], Iterable[str]]] = {
        "table": lambda r: (render_table(r, max_rows=max_rows),),
        "json": _json_chunks,
        "markdown": lambda r: (render_markdown(r),),
        "csv": lambda r: (render_csv(r),),
        "ocsf": lambda r: (render_ocsf_report(r),),
    }
    if fmt not in renderers:
        raise UsageError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}",
                         parameter="format")
    return iter(renderers[fmt](report))


def require_policy(fmt: str, policy: object | None) -> None:
    """Refuse ``ocsf`` without a policy: it writes policy findings, and there are none."""
    if fmt == "ocsf" and policy is None:
        raise ConfigError("--format ocsf writes policy findings, but no policy is configured "
                          "(set NEXUS_AUDIT_POLICY or policy = \"...\" in the config file)",
                          parameter="format")


def render_ocsf_report(report: Report) -> str:
    """The report's findings as OCSF Compliance Finding events, one JSON line each."""
    require_policy("ocsf", report.findings)
    assert report.findings is not None  # checked just above
    return render_ocsf(report.findings, product_version=__version__)


#: About how many characters of JSON :func:`render_chunks` hands over at a time.
JSON_CHUNK: Final = 1 << 16


def _json_chunks(report: Report) -> Iterator[str]:
    encoder = json.JSONEncoder(indent=2, ensure_ascii=False)
    pending: list[str] = []
    size = 0
    for piece in encoder.iterencode(report.to_json_dict()):
        pending.append(piece)
        size += len(piece)
        if size >= JSON_CHUNK:
            yield escape.json_text("".join(pending))
            pending, size = [], 0
    pending.append("\n")
    yield escape.json_text("".join(pending))


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _since(moment: datetime, at_least: bool) -> str:
    """A start time, marked ``≤`` when the first crawl already saw the state (it may be
    older)."""
    return ("≤ " if at_least else "") + (isoformat(moment) or "")


def _value(value: Any, *, spaced: bool = False) -> str:
    """A drift value as text; JSON for tags and lists (``spaced``: with a space after
    each comma, so a table can wrap it between items, never inside one)."""
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(", " if spaced else ",", ":"))
    return str(value)


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
                      f"(sha256 {report.pricing.get('digest', '')[:12]})", 8)]
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
        ("buckets", f"{inv.buckets_total}  ({_size(inv.buckets_size_bytes)})")])
    cost = report.cost
    out += _section(f"Cost ({cost.currency})")
    regions = sorted(set(cost.accrued.by_region) | set(cost.run_rate_hourly.by_region))
    rows = [["total", _money(cost.accrued.total), _money(cost.run_rate_hourly.total)],
            ["compute", _money(cost.accrued.compute), _money(cost.run_rate_hourly.compute)],
            ["storage", _money(cost.accrued.storage), _money(cost.run_rate_hourly.storage)]]
    rows += [[f"  {r}", _money(cost.accrued.by_region.get(r, 0.0)),
              _money(cost.run_rate_hourly.by_region.get(r, 0.0))] for r in regions]
    out += _grid(["", "accrued", "per hour now"], rows, list, len(rows))
    out += _section("Drift")
    out += _grid(["observed", "kind", "id", "change", "field", "old → new"], report.drift,
                 lambda x: [isoformat(x.observed_at) or "", x.kind, x.id, x.change,
                            x.field or "",
                            "" if x.change != "changed"
                            else f"{_value(x.old, spaced=True)} → {_value(x.new, spaced=True)}"],
                 max_rows, keep=(0,)) if report.drift else ["  no drift"]
    out += _section("Public buckets and exposures")
    out += _grid(["bucket", "access", "region", "size", "public since"], report.public_buckets,
                 lambda b: [b.id, b.access, b.region, _size(b.size_bytes),
                            _since(b.public_since, b.at_least)],
                 max_rows, keep=(1, 3, 4)) if report.public_buckets else [
                     "  no bucket is exposed now"]
    out.append("")
    out += _grid(["bucket", "access", "start", "end"], report.exposures,
                 lambda e: [e.id, e.access, _since(e.start, e.at_least),
                            isoformat(e.end) or "ongoing"],
                 max_rows, keep=(1, 2, 3)) if report.exposures else ["  no exposure in the window"]
    if any(b.at_least for b in report.public_buckets) or any(
            e.at_least for e in report.exposures):
        out.append("  ≤: exposed since at least then (the first crawl saw it so)")
    out += _section("Stale instances")
    out += _grid(["instance", "name", "status", "region", "since", "per hour"],
                 report.stale_instances,
                 lambda s: [s.id, s.name, s.status, s.region, _since(s.stale_since, s.at_least),
                            _money(s.hourly_cost)],
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


def _md_cell(value: Any) -> str:
    return escape.markdown(_value(value))


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
           f"sha256 `{_md_cell(report.pricing.get('digest'))}`", "",
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
            f" (by status: {_value(inv['instances']['by_status'])};"
            f" by region: {_value(inv['instances']['by_region'])})",
            f"- Buckets: {inv['buckets']['total']} ({inv['buckets']['size_bytes']} bytes)", "",
            f"## Cost ({report.cost.currency})", ""]
    acc, rate = report.cost.accrued, report.cost.run_rate_hourly
    regions = sorted(set(acc.by_region) | set(rate.by_region))
    cost_rows = [["total", _money(acc.total), _money(rate.total)],
                 ["compute", _money(acc.compute), _money(rate.compute)],
                 ["storage", _money(acc.storage), _money(rate.storage)]]
    cost_rows += [[f"region {r}", _money(acc.by_region.get(r, 0.0)),
                   _money(rate.by_region.get(r, 0.0))] for r in regions]
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
                       "yes" if s.at_least else "no", _money(s.hourly_cost)]
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
                         _value(v) if isinstance(v, (dict, list)) else v)
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
    for f in d.get("findings", ()):
        exc = f["exception"] or {}
        row("finding", account=f["account"], kind=f["kind"], id=f["resource"],
            status=f["status"], region=f["region"], start=f["first_seen"], end=f["last_seen"],
            rule=f["rule"], severity=f["severity"], current=str(f["current"]).lower(),
            detail=f["detail"], exception=exc.get("pattern"),
            exception_owner=exc.get("owner"), exception_reason=exc.get("reason"),
            exception_expires=exc.get("expires"))
    return buffer.getvalue()
