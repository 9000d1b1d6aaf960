"""Daily series over a report's window: what the HTML report's charts draw.

One point per UTC day, from the history through ``queries/series_*.sql`` on the connection
:func:`nexus_audit.audit.report.build_report` built its temp tables on (``obs``,
``instance_prices``). ``Series.to_json_dict()`` is the report JSON's additive ``series``
key (README, "HTML report"): it is there only when asked for (``build_report(...,
series=True)``, ``report --format html``), so the JSON report stays as it was.

- ``cost``: every day the window touches, compute and storage accrued in that day (their
  sum over the days is the report's accrued cost; days in a coverage gap accrue 0).
- ``instances`` and ``buckets``: the days with a successful crawl of that kind, as the
  day's last crawl of each account saw the fleet.
- ``drift``: the days with drift, the report's drift rows counted by change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, timedelta
from typing import Any, Final

import duckdb

from nexus_audit.domain.timeutil import Window
from nexus_audit.history.failures import money_in_range
from nexus_audit.history.sql import bind, create_temp, load_query

#: The changes drift knows, in the order the charts stack them.
CHANGES: Final = ("added", "removed", "changed")
_EPOCH: Final = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class CostDay:
    """Money accrued in one UTC day."""

    day: date
    compute: float
    storage: float

    @property
    def total(self) -> float:
        """Compute plus storage."""
        return self.compute + self.storage


@dataclass(frozen=True, slots=True)
class InstancesDay:
    """Instances by status as the day's last instance crawl saw them."""

    day: date
    by_status: dict[str, int]


@dataclass(frozen=True, slots=True)
class BucketsDay:
    """Buckets and their bytes as the day's last bucket crawl saw them."""

    day: date
    count: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class DriftDay:
    """Drift rows observed in one UTC day, by change."""

    day: date
    by_change: dict[str, int]


@dataclass(frozen=True, slots=True)
class Series:
    """The daily series of one report."""

    cost: tuple[CostDay, ...]
    instances: tuple[InstancesDay, ...]
    buckets: tuple[BucketsDay, ...]
    drift: tuple[DriftDay, ...]

    def to_json_dict(self, money: Callable[[float], float]) -> dict[str, Any]:
        """The report JSON's ``series`` value (days as ``YYYY-MM-DD``), amounts rounded by
        ``money``: the report's own rounding (``nexus_audit.audit.report.money``), passed
        in because the report imports this module."""
        return {
            "cost": [{"day": d.day.isoformat(), "compute": money(d.compute),
                      "storage": money(d.storage)} for d in self.cost],
            "instances": [{"day": d.day.isoformat(), "by_status": dict(d.by_status)}
                          for d in self.instances],
            "buckets": [{"day": d.day.isoformat(), "count": d.count,
                         "size_bytes": d.size_bytes} for d in self.buckets],
            "drift": [{"day": d.day.isoformat(), "by_change": dict(d.by_change)}
                      for d in self.drift],
        }


def window_days(window: Window) -> list[date]:
    """Every UTC day ``[since, until)`` touches, in order."""
    first = window.since.astimezone(UTC).date()
    last = (window.until.astimezone(UTC) - timedelta(microseconds=1)).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _day(number: int) -> date:
    return _EPOCH + timedelta(days=int(number))


def _run(con: duckdb.DuckDBPyConnection, name: str,
         values: dict[str, Any]) -> list[tuple[Any, ...]]:
    sql = load_query(name)
    return con.execute(sql, bind(sql, values)).fetchall()


def build_series(con: duckdb.DuckDBPyConnection, window: Window,
                 values: dict[str, Any]) -> Series:
    """The daily series over ``window``, on a connection holding the report's temp tables
    (``obs``, ``instance_prices``) and with the report's query ``values``."""
    cost: dict[date, dict[str, float]] = {d: {} for d in window_days(window)}
    with money_in_range():
        cost_rows = _run(con, "series_cost", values)
    for number, part, amount in cost_rows:
        day = _day(number)
        # A stretch covered inside the window never lies outside its days; kept if it did.
        cost.setdefault(day, {})[part] = float(amount or 0.0)
    instances: dict[date, dict[str, int]] = {}
    for number, status, n in _run(con, "series_instances", values):
        instances.setdefault(_day(number), {})[status] = int(n)
    buckets = tuple(BucketsDay(day=_day(number), count=int(n), size_bytes=int(size or 0))
                    for number, n, size in _run(con, "series_buckets", values))
    create_temp(con, "drift_rows", "drift", values)
    drift: dict[date, dict[str, int]] = {}
    for number, change, n in _run(con, "series_drift", values):
        drift.setdefault(_day(number), {})[change] = int(n)
    return Series(
        cost=tuple(CostDay(day=d, compute=parts.get("compute", 0.0),
                           storage=parts.get("storage", 0.0))
                   for d, parts in sorted(cost.items())),
        instances=tuple(InstancesDay(day=d, by_status=dict(sorted(s.items())))
                        for d, s in sorted(instances.items())),
        buckets=buckets,
        drift=tuple(DriftDay(day=d, by_change=c) for d, c in sorted(drift.items())),
    )
