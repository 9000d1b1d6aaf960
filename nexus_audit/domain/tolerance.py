"""The tolerance of a crawl's record count against the totals the API reports.

Records come and go between the pages of one walk, so a count a little off the API's
``pagination.total`` is churn; one far off, while the totals agree with each other, means
pages went missing (the crawl fails ``TOTAL_MISMATCH``). How far is "a little" is the
``total_tolerance`` setting, parsed here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

from nexus_audit.errors import ConfigError

_TOLERANCE_PART: Final = re.compile(r"(?P<n>[0-9]+)|(?P<p>[0-9]+(?:\.[0-9]+)?)%", re.ASCII)


@dataclass(frozen=True, slots=True)
class TotalTolerance:
    """How far a crawl's record count may be from totals the API agrees on (churn between
    pages) before the crawl fails ``TOTAL_MISMATCH``: the larger of ``records`` and
    ``percent`` % of the total. Written ``"10,1%"`` (either part may be left out)."""

    records: int = 10
    percent: float = 1.0

    def records_for(self, total: int) -> int:
        """Records the count may be off by for an API total of ``total``."""
        return max(self.records, math.floor(total * self.percent / 100.0))

    def allows(self, collected: int, total: int) -> bool:
        """Whether ``collected`` is within the tolerance of ``total``."""
        return abs(collected - total) <= self.records_for(total)

    def breach(self, collected: int, first: int | None, last: int | None) -> int | None:
        """The total ``collected`` is too far from, or None: one total is checked alone,
        two that differ allow any count between them (churn) and the tolerance beyond."""
        known = [t for t in (first, last) if t is not None]
        if not known:
            return None
        nearest = min(max(collected, min(known)), max(known))
        return None if self.allows(collected, nearest) else nearest

    def __str__(self) -> str:
        return f"{self.records},{self.percent:g}%"

    @classmethod
    def parse(cls, value: Any, setting: str = "total_tolerance") -> TotalTolerance:
        """``"10,1%"``, ``"1%"``, ``"25"`` or ``25``; :class:`ConfigError` otherwise."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return cls(records=value, percent=0.0)
        text = value.strip() if isinstance(value, str) else ""
        records: int | None = None
        percent: float | None = None
        for part in (p.strip() for p in text.split(",")):
            match = _TOLERANCE_PART.fullmatch(part)
            if match is None or (match["n"] and records is not None) or (
                    match["p"] and percent is not None):
                raise ConfigError(f"{setting}: expected records and/or a percentage like "
                                  f"'10,1%', got {value!r}", parameter=setting)
            if match["n"]:
                records = int(match["n"])
            else:
                percent = float(match["p"])
        if percent is not None and percent > 100:
            raise ConfigError(f"{setting}: {percent:g}% is above 100%", parameter=setting)
        return cls(records=records or 0, percent=percent or 0.0)


DEFAULT_TOTAL_TOLERANCE: Final = TotalTolerance()
