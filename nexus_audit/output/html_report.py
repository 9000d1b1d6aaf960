"""The report as one self-contained HTML page with SVG charts (``report --format html``).

Everything is inline (CSS, SVG): the page fetches no script, font or image when viewed, so
it reads the same offline, attached to a ticket or printed to PDF (the print stylesheet
lays it out on A4). The sections are the table report's, never shortened; the charts draw
the report's daily series (:mod:`nexus_audit.audit.series`) and its exposures.

The markup comes from Jinja2 templates (``nexus_audit/output/templates/``) with autoescape on:
every value from the API is untrusted text. Before escaping, :func:`visible` writes control,
format (bidi overrides) and other hidden characters as escapes, as the terminal table does,
so an id holding them reads as what it is and the page stays valid HTML. The charts are
Jinja2 macros of SVG elements over geometry computed here, not a chart library's output: pygal, the
maintained library that draws SVG on the server, writes ``<script>`` tags by default (one
loading its tooltips from a CDN) and has no timeline chart for the exposures.

Colours are the Okabe-Ito palette, distinguishable with the common colour-vision
deficiencies; each series also has a legend entry and each mark a ``<title>`` with its
values, so no figure is carried by colour alone.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import resources
from typing import Any, Final

import jinja2
from markupsafe import Markup, escape

from nexus_audit import __version__
from nexus_audit.audit.findings import summary
from nexus_audit.audit.report import Report
from nexus_audit.audit.report import money as report_money
from nexus_audit.audit.series import CHANGES, Series, window_days
from nexus_audit.domain.escape import terminal
from nexus_audit.domain.timeutil import isoformat

#: Okabe & Ito (2008), "Color Universal Design": eight colours told apart with protanopia,
#: deuteranopia and tritanopia. Named as in the paper; black is kept for text.
OKABE_ITO: Final = {
    "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7", "black": "#000000",
}
_P: Final = OKABE_ITO
#: Colours of known series; any other status gets the next of ``_OTHERS``.
COLOURS: Final = {
    "compute": _P["blue"], "storage": _P["orange"],
    "running": _P["bluish_green"], "stopped": _P["vermillion"], "pending": _P["sky_blue"],
    "added": _P["bluish_green"], "removed": _P["vermillion"], "changed": _P["blue"],
    "buckets": _P["reddish_purple"], "bytes": _P["sky_blue"],
    "exposure": _P["orange"], "ongoing": _P["vermillion"],
}
_OTHERS: Final = (_P["reddish_purple"], _P["orange"], _P["yellow"], _P["sky_blue"],
                  _P["blue"], _P["black"])

# Chart geometry (SVG user units; the SVG scales to the page's width).
WIDTH: Final = 720.0
LEFT: Final = 64.0
RIGHT: Final = 12.0
TOP: Final = 12.0
PLOT_HEIGHT: Final = 170.0
AXIS_HEIGHT: Final = 22.0
ROW_HEIGHT: Final = 16.0
#: The width of the charts shown side by side.
HALF: Final = 440.0


# -- untrusted text -------------------------------------------------------------------------

def visible(value: Any) -> Any:
    """``value`` with every character that would not read as itself (controls, format
    characters such as bidi overrides, surrogates, private-use, unassigned and
    noncharacter code points, odd spaces) written as an escape (``\\x1b``, ``\\u202e``):
    the terminal's rule (:func:`nexus_audit.domain.escape.terminal`), so the page and
    the table show an odd id the same way, and the page stays valid HTML. Other values
    and Markup (our own escaped fragments) pass as they are."""
    if not isinstance(value, str) or isinstance(value, Markup):
        return value
    return terminal(value)


@functools.lru_cache(maxsize=1 << 16)
def _escaped(text: str) -> Markup:
    return escape(visible(text))


def safe_text(value: Any) -> Any:
    """The environment's ``finalize``: a string made :func:`visible` and escaped (cached:
    a year's drift table prints the same kinds, changes, fields and ids thousands of
    times); Markup and other values pass on to autoescape as they are."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _escaped(value)
    return value


# -- figures ----------------------------------------------------------------------------------

def money(value: float) -> str:
    """Money as the table shows it: 2 decimals, thousands separated."""
    return f"{value:,.2f}"


def size(n: int) -> str:
    """Bytes in decimal units (1 GB = 10^9 bytes, as the pricing counts them)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


def _num(value: float) -> str:
    """A coordinate, short: one decimal, no trailing zero."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Round axis ticks from 0 to at least ``top`` (1, 2, 2.5 or 5 times a power of 10)."""
    if not math.isfinite(top) or top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def _tick_label(value: float, unit: str) -> str:
    if unit == "bytes":
        return size(int(value))
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


# -- charts -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rect:
    """One rectangle of a mark."""

    x: str
    y: str
    width: str
    height: str
    colour: str
    css: str = ""


@dataclass(frozen=True, slots=True)
class Mark:
    """One point of a series: a group of rectangles with one tooltip."""

    key: str
    title: str
    rects: tuple[Rect, ...]


@dataclass(frozen=True, slots=True)
class Tick:
    """An axis label at a position."""

    at: str
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """An SVG chart ready for the template: marks, axes, legend, an optional reference
    line (the run rate) and row labels (the exposure timeline)."""

    id: str
    title: str
    description: str
    height: str
    marks: tuple[Mark, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    legend: tuple[tuple[str, str], ...]
    plot_bottom: str
    reference: tuple[str, str] | None = None  # (y, label)
    rows: tuple[Tick, ...] = ()
    empty: str = ""
    width: str = _num(WIDTH)
    left: str = _num(LEFT)
    right: str = _num(WIDTH - RIGHT)


def _day_ticks(days: Sequence[date], x_of: dict[date, float], band: float) -> tuple[Tick, ...]:
    """About six day labels, evenly spaced, always the first day."""
    if not days:
        return ()
    step = max(1, math.ceil(len(days) / 6))
    return tuple(Tick(_num(x_of[d] + band / 2), d.isoformat())
                 for d in days[::step])


def stacked_days(chart_id: str, title: str, description: str, days: Sequence[date],
                 points: Sequence[tuple[date, Sequence[tuple[str, float]]]], *,
                 unit: str = "", fmt: Any = None, reference: tuple[float, str] | None = None,
                 empty: str = "no data in the window", width: float = WIDTH) -> Chart:
    """Stacked bars, one mark per point, placed on the window's days (a day without a
    point is left blank, so a gap shows as one). ``width``: of the SVG's coordinates; a
    narrower chart (shown half-width) draws its text larger."""
    fmt = fmt or (lambda v: _tick_label(v, unit))
    plot_w = width - LEFT - RIGHT
    band = plot_w / max(1, len(days))
    bar = max(band * 0.8, 0.4)
    x_of = {d: LEFT + i * band for i, d in enumerate(days)}
    top = max((sum(v for _, v in parts) for _, parts in points), default=0.0)
    if reference is not None:
        top = max(top, reference[0])
    ticks = nice_ticks(top)
    scale_top = ticks[-1] or 1.0
    bottom = TOP + PLOT_HEIGHT

    def y(v: float) -> float:
        return bottom - v / scale_top * PLOT_HEIGHT

    names: dict[str, str] = {}
    marks = []
    for day, parts in points:
        x = x_of[day] + (band - bar) / 2
        rects = []
        base = 0.0
        for name, value in parts:
            colour = names.setdefault(name, _colour(name, names))
            if value > 0:
                rects.append(Rect(_num(x), _num(y(base + value)), _num(bar),
                                  _num(y(base) - y(base + value)), colour))
            base += value
        label = ", ".join(f"{name} {fmt(value)}" for name, value in parts)
        marks.append(Mark(day.isoformat(), f"{day.isoformat()}: {label}", tuple(rects)))
    ref = None
    if reference is not None:
        ref = (_num(y(reference[0])), reference[1])
    return Chart(
        id=chart_id, title=title, description=description,
        height=_num(bottom + AXIS_HEIGHT), marks=tuple(marks),
        x_ticks=_day_ticks(days, x_of, band),
        y_ticks=tuple(Tick(_num(y(t)), _tick_label(t, unit)) for t in ticks),
        legend=tuple((n, c) for n, c in names.items()), plot_bottom=_num(bottom),
        reference=ref, empty=empty if not marks else "", width=_num(width),
        right=_num(width - RIGHT))


def _colour(name: str, known: dict[str, str]) -> str:
    if name in COLOURS:
        return COLOURS[name]
    used = set(known.values())
    return next((c for c in _OTHERS if c not in used), _OTHERS[len(known) % len(_OTHERS)])


def exposure_timeline(report: Report) -> Chart:
    """One row per bucket, one bar per exposure window inside the report's window; an
    ongoing one reaches the right edge."""
    since, until = report.window.since, report.window.until
    span = (until - since).total_seconds()
    rows: dict[tuple[str, str], int] = {}
    for e in report.exposures:
        rows.setdefault((e.account, e.id), len(rows))
    many_accounts = len(report.accounts) > 1
    names = [f"{a}/{b}" if many_accounts else b for a, b in rows]
    # Room for the row labels (about 6 units a character at 10px), up to 40% of the
    # width; a longer one runs off the left edge, and reads whole in its bar's title and
    # in the table below.
    left = min(max(LEFT, 6.0 * max((len(str(visible(n))) for n in names), default=0) + 8),
               0.4 * WIDTH)
    plot_w = WIDTH - left - RIGHT

    def x(moment: datetime) -> float:
        seconds = min(max((moment - since).total_seconds(), 0.0), span)
        return left + seconds / span * plot_w

    marks = []
    for e in report.exposures:
        row = rows[(e.account, e.id)]
        x0 = x(e.start)
        x1 = x(e.end) if e.end is not None else left + plot_w
        css = "ongoing" if e.end is None else "closed"
        rect = Rect(_num(x0), _num(TOP + row * ROW_HEIGHT + 2), _num(max(x1 - x0, 1.0)),
                    _num(ROW_HEIGHT - 4),
                    COLOURS["ongoing"] if e.end is None else COLOURS["exposure"], css)
        start = ("≤ " if e.at_least else "") + (isoformat(e.start) or "")
        end = isoformat(e.end) or "ongoing"
        who = f"{e.account}/{e.id}" if many_accounts else e.id
        marks.append(Mark(e.id, f"{who} ({e.access}): {start} → {end}", (rect,)))
    bottom = TOP + max(1, len(rows)) * ROW_HEIGHT
    days = window_days(report.window)
    step = max(1, math.ceil(len(days) / 6))
    x_ticks = tuple(Tick(_num(x(max(since, _midnight(d)))), d.isoformat())
                    for d in days[::step])
    labels = tuple(Tick(_num(TOP + i * ROW_HEIGHT + ROW_HEIGHT / 2 + 4), name)
                   for i, name in enumerate(names))
    return Chart(
        id="chart-exposures", title="Exposure timeline",
        description="One bar per bucket per exposure window; an ongoing exposure reaches "
                    "the right edge (the window's end).",
        height=_num(bottom + AXIS_HEIGHT), marks=tuple(marks), x_ticks=x_ticks,
        y_ticks=(), legend=(("exposed, ended", COLOURS["exposure"]),
                            ("exposed, ongoing", COLOURS["ongoing"])),
        plot_bottom=_num(bottom), rows=labels, left=_num(left),
        empty="" if marks else "no exposure in the window")


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def charts(report: Report, series: Series) -> dict[str, Chart]:
    """Every chart of the page, by the section it belongs to."""
    days = window_days(report.window)
    currency = report.cost.currency
    rate = report.cost.run_rate_hourly.total
    cost = stacked_days(
        "chart-cost", f"Cost per day ({currency})",
        "Compute and storage accrued each UTC day, stacked; the dashed line is the run "
        "rate now times 24 hours.", days,
        [(d.day, (("compute", d.compute), ("storage", d.storage))) for d in series.cost],
        fmt=money, reference=(rate * 24, f"run rate now × 24 h: {money(rate * 24)}"))
    statuses = sorted({s for d in series.instances for s in d.by_status},
                      key=lambda s: (s not in COLOURS, s))
    instances = stacked_days(
        "chart-instances", "Instances per day by status",
        "Instances as each day's last instance crawl saw them, stacked by status.", days,
        [(d.day, tuple((s, float(d.by_status.get(s, 0))) for s in statuses))
         for d in series.instances], width=HALF)
    buckets = stacked_days(
        "chart-buckets", "Buckets per day",
        "Buckets as each day's last bucket crawl saw them.", days,
        [(d.day, (("buckets", float(d.count)),)) for d in series.buckets], width=HALF)
    size_chart = stacked_days(
        "chart-bytes", "Bytes stored per day",
        "Bytes in all buckets as each day's last bucket crawl saw them.", days,
        [(d.day, (("bytes", float(d.size_bytes)),)) for d in series.buckets], unit="bytes",
        width=HALF)
    drift = stacked_days(
        "chart-drift", "Drift events per day by change",
        "Drift rows observed each UTC day, stacked by change.", days,
        [(d.day, tuple((c, float(d.by_change.get(c, 0))) for c in CHANGES))
         for d in series.drift], empty="no drift in the window")
    return {"cost": cost, "instances": instances, "buckets": buckets, "bytes": size_chart,
            "drift": drift, "exposures": exposure_timeline(report)}


# -- the page ---------------------------------------------------------------------------------

@functools.cache
def environment() -> jinja2.Environment:
    """The templates' environment: autoescape on for every template, unknown names an
    error, every printed value through :func:`safe_text` (:func:`visible`, escaped)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("nexus_audit.output", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, finalize=safe_text,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    # exact: money as the report JSON has it (6 decimals), for <data value>.
    env.filters.update(money=money, exact=report_money, size=size, iso=isoformat,
                       value=_value)
    return env


@functools.cache
def stylesheet() -> str:
    """The page's CSS (``templates/report.css``), inlined into every page."""
    return resources.files("nexus_audit.output").joinpath("templates/report.css").read_text("utf-8")


def content_security_policy(css: str) -> str:
    """The page's CSP: nothing may load and no script may run; the one inline stylesheet
    is allowed by its hash. A second line of defence behind the escaping, the same in the
    page's ``<meta>`` and in ``serve``'s response header."""
    digest = base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode()
    return (f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; "
            "script-src 'none'; base-uri 'none'; form-action 'none'")


def _value(value: Any) -> str:
    """A drift value as text (JSON for tags and lists), ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(", ", ":"), ensure_ascii=False)
    return str(value)


def drift_groups(drift: Sequence[Any]) -> list[tuple[str, int, list[tuple[str, list[Any]]]]]:
    """The drift rows (in time order) by UTC day, and within a day by the moment they
    were observed: ``(day, rows in the day, [(HH:MM:SS, rows), ...])``. The table prints a
    moment once for all its rows (a rowspan), which keeps a year's page small."""
    days: list[tuple[str, int, list[tuple[str, list[Any]]]]] = []
    stamps: dict[datetime, str] = {}  # rows of one crawl share its time: format it once
    for row in drift:
        stamp = stamps.get(row.observed_at)
        if stamp is None:
            stamp = stamps[row.observed_at] = isoformat(row.observed_at) or ""
        day, moment = stamp[:10], stamp[11:19]
        if not days or days[-1][0] != day:
            days.append((day, 0, []))
        _, count, moments = days[-1]
        if not moments or moments[-1][0] != moment:
            moments.append((moment, []))
        moments[-1][1].append(row)
        days[-1] = (day, count + 1, moments)
    return days


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (charts need ``report.series``:
    ``build_report(..., series=True)``; without it the page has the tables alone)."""
    return "".join(render_html_chunks(report))


def render_html_chunks(report: Report) -> Iterator[str]:
    """The page in pieces, to write one after another."""
    template = environment().get_template("report.html.j2")
    findings = report.findings
    order = {"expired": 0, "open": 1, "accepted": 2}
    severity = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    ranked = sorted(findings or (), key=lambda f: (order[f.status], severity[f.severity],
                                                   f.first_seen))
    cost = report.cost
    regions = sorted(set(cost.accrued.by_region) | set(cost.run_rate_hourly.by_region))
    context = {
        "r": report, "version": __version__, "palette": OKABE_ITO,
        "charts": charts(report, report.series) if report.series is not None else None,
        "regions": regions, "drift_days": drift_groups(report.drift),
        "findings": ranked, "counts": summary(findings or ()),
        "many_accounts": len(report.accounts) > 1,
        # Our own stylesheet, shipped in the package: no API value reaches it.
        "css": Markup(stylesheet()),  # noqa: S704
        "csp": content_security_policy(stylesheet()),
    }
    return template.generate(context)


def render_index() -> str:
    """``serve``'s landing page: links to what it answers."""
    template = environment().get_template("index.html.j2")
    return template.render(version=__version__, css=Markup(stylesheet()),  # noqa: S704
                           csp=content_security_policy(stylesheet()))
