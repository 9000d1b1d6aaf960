"""Render a :class:`Report`: an 80-column table, JSON, Markdown, CSV.

The table shortens long lists ("… and N more") and wraps long cells onto more lines, never
cutting a value (a cut "public-read…" could be "public-read-write"); JSON, Markdown and CSV
never drop a row. Money shows 2 decimals in the table and Markdown, 6 in JSON and CSV.

Every value is escaped for the format's reader (:mod:`nexus_audit.domain.escape`): the table's
cells show control characters as visible escapes, Markdown cells cannot break a row or
carry HTML, CSV text cannot start a formula, JSON escapes C1 controls and U+2028/U+2029.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final

from nexus_audit import __version__
from nexus_audit.audit.report import Report
from nexus_audit.domain import escape
from nexus_audit.errors import ConfigError, UsageError
from nexus_audit.output import indented
from nexus_audit.output.csvfile import CSV_COLUMNS, CSV_FINDING_COLUMNS, render_csv
from nexus_audit.output.markdown import render_markdown
from nexus_audit.output.ocsf import render_ocsf
from nexus_audit.output.table import TABLE_ROWS, render_table

FORMATS: Final = ("table", "json", "markdown", "csv", "ocsf", "html")


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
        "html": _html_chunks,  # charts need build_report(..., series=True)
    }
    if fmt not in renderers:
        raise UsageError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}",
                         parameter="format")
    return iter(renderers[fmt](report))


def _html_chunks(report: Report) -> Iterable[str]:
    # Imported when asked for: the page's template engine (jinja2) is the HTML's alone.
    from nexus_audit.output.html_report import render_html_chunks

    return render_html_chunks(report)


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
    return render_ocsf(report.findings, product_version=__version__,
                       chain_head=report.evidence.chain_head if report.evidence else None)


#: About how many characters of JSON :func:`render_chunks` hands over at a time.
JSON_CHUNK: Final = 1 << 16


def _json_chunks(report: Report) -> Iterator[str]:
    # What json.JSONEncoder(indent=2, ensure_ascii=False) writes, faster (indented.py).
    pending: list[str] = []
    size = 0
    for piece in indented.iterencode(report.to_json_dict(tables=True)):
        pending.append(piece)
        size += len(piece)
        if size >= JSON_CHUNK:
            yield escape.json_text("".join(pending))
            pending, size = [], 0
    pending.append("\n")
    yield escape.json_text("".join(pending))


__all__ = ["CSV_COLUMNS", "CSV_FINDING_COLUMNS", "FORMATS", "TABLE_ROWS", "render",
           "render_chunks", "render_csv", "render_markdown", "render_table",
           "require_policy"]
