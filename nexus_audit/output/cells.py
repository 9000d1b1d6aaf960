"""Cell text shared by the table and Markdown renderings: money, sizes, times, values."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from nexus_audit.domain.timeutil import isoformat


def fmt_money(value: float) -> str:
    return f"{value:,.2f}"


def fmt_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def fmt_since(moment: datetime, at_least: bool) -> str:
    """A start time, marked ``≤`` when the first crawl already saw the state (it may be
    older)."""
    return ("≤ " if at_least else "") + (isoformat(moment) or "")


def fmt_value(value: Any, *, spaced: bool = False) -> str:
    """A drift value as text; JSON for tags and lists (``spaced``: with a space after
    each comma, so a table can wrap it between items, never inside one)."""
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(", " if spaced else ",", ":"))
    return str(value)
