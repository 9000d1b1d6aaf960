"""A window of history → a :class:`Report`: the audit answers, from ``queries/``.

``build_report`` is what both ``nexus-audit report`` and ``GET /report`` call: it reads
through the store, never prints, and raises our errors (:class:`NoDataError` for an empty
database, an unknown account or a window without crawls; :class:`UsageError` for bad
values). ``Report.to_json_dict()`` is the report JSON of DESIGN.md.

Conventions (see the queries for the SQL):

- The window is half-open, ``[since, until)``; a crawl observes the fleet at its
  ``finished_at``. Inventory, run-rate, public buckets and stale instances are as of the
  last successful crawl of each kind before ``until``.
- ``crawls.coverage`` (an extension of the DESIGN.md contract): covered and window seconds
  summed over every (account, kind) stream, their ratio, and each coverage gap.
- ``crawls.clock_skews`` (an extension too): crawls re-dated because the clock stepped
  back, detected by a crawl that finished inside the window (see
  :mod:`nexus_audit.history.store`).
  A Parquet export carries no correction log: there the list is empty (the crawls' dates
  are the corrected ones either way).
- Money is rounded to 6 decimals in JSON (the table shows 2).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import duckdb

from nexus_audit.audit.answers import (
    MONEY_DECIMALS,
    Amounts,
    ClockSkew,
    Cost,
    Coverage,
    CrawlCounts,
    Drift,
    Exposure,
    Gap,
    Inventory,
    PublicBucket,
    StaleInstance,
    money,
)
from nexus_audit.audit.findings import Finding, evaluate
from nexus_audit.audit.rows import Rows, Table, collector_paused, columns_of, mapped
from nexus_audit.audit.series import Series, build_series
from nexus_audit.domain.policy import Policy
from nexus_audit.domain.pricing import Pricing
from nexus_audit.domain.timeutil import Window, isoformat
from nexus_audit.errors import NoDataError, UsageError
from nexus_audit.history.evidence import Evidence, read_evidence
from nexus_audit.history.failures import money_in_range
from nexus_audit.history.protocol import History
from nexus_audit.history.readers import resolve_accounts
from nexus_audit.history.sql import create_temp, decoded, from_epoch_us, run_query

#: The answers' values, importable from here too.
__all__ = [
    "MONEY_DECIMALS",
    "Amounts",
    "ClockSkew",
    "Cost",
    "Coverage",
    "CrawlCounts",
    "Drift",
    "Exposure",
    "Gap",
    "History",
    "Inventory",
    "PublicBucket",
    "Report",
    "StaleInstance",
    "build_report",
    "from_epoch_us",
    "money",
    "prepare",
    "query_values",
    "run_query",
]


@dataclass(frozen=True, slots=True)
class Report:
    """The audit answers for one window."""

    generated_at: datetime
    window: Window
    accounts: tuple[str, ...]
    crawls: CrawlCounts
    inventory: Inventory
    cost: Cost
    #: The drift rows and stale instances read as tuples (:class:`Rows` of their columns).
    drift: Sequence[Drift]
    public_buckets: tuple[PublicBucket, ...]
    exposures: tuple[Exposure, ...]
    stale_instances: Sequence[StaleInstance]
    pricing: dict[str, str] = field(default_factory=dict)
    #: Policy findings (``nexus_audit.audit.findings``); ``None`` when no policy is configured.
    findings: tuple[Finding, ...] | None = None
    #: What the report cites of the evidence chain (the chain head as of the window's end
    #: and the manifests of the crawls it used).
    evidence: Evidence | None = None
    #: Daily series for the HTML report's charts (``nexus_audit.audit.series``); ``None``
    #: unless asked for, so the JSON has no ``series`` key by default.
    series: Series | None = None

    def to_json_dict(self, *, tables: bool = False) -> dict[str, Any]:
        """The report JSON of DESIGN.md (times ISO 8601 UTC ``Z``, money rounded).

        With ``tables``, the long lists (drift, stale instances) are :class:`Table` values
        (their columns) for ``output/indented.py`` to write without a dict per row; without,
        lists of dicts (any JSON encoder's input)."""
        cov = self.crawls.coverage
        data: dict[str, Any] = {
            "generated_at": isoformat(self.generated_at),
            "window": {"since": isoformat(self.window.since),
                       "until": isoformat(self.window.until)},
            "accounts": list(self.accounts),
            "crawls": {
                "count": self.crawls.count,
                "succeeded": self.crawls.succeeded,
                "failed": self.crawls.failed,
                "last_success": isoformat(self.crawls.last_success),
                "coverage": {
                    "covered_seconds": round(cov.covered_seconds, 3),
                    "window_seconds": round(cov.window_seconds, 3),
                    "ratio": round(cov.ratio, 6),
                    "gaps": [{"account": g.account, "kind": g.kind, "start": isoformat(g.start),
                              "end": isoformat(g.end)} for g in cov.gaps],
                },
                "clock_skews": [
                    {"account": k.account, "crawl_id": k.crawl_id, "kinds": list(k.kinds),
                     "recorded_finished_at": isoformat(k.recorded_finished_at),
                     "corrected_to": isoformat(k.corrected_to),
                     "seconds": round(k.seconds, 3), "detected_by_crawl": k.detected_by_crawl}
                    for k in self.crawls.clock_skews],
            },
            "inventory": {
                "instances": {"total": self.inventory.instances_total,
                              "by_status": dict(self.inventory.instances_by_status),
                              "by_region": dict(self.inventory.instances_by_region)},
                "buckets": {"total": self.inventory.buckets_total,
                            "size_bytes": self.inventory.buckets_size_bytes},
            },
            "cost": {
                "currency": self.cost.currency,
                "accrued": _amounts(self.cost.accrued),
                "run_rate_hourly": _amounts(self.cost.run_rate_hourly),
            },
            "drift": self._table(tables, self.drift, _DRIFT_FIELDS, {"observed_at": isoformat}),
            "public_buckets": [{"id": b.id, "region": b.region, "access": b.access,
                                "size_bytes": b.size_bytes,
                                "public_since": isoformat(b.public_since),
                                "at_least": b.at_least,
                                "account": b.account} for b in self.public_buckets],
            "exposures": [{"id": e.id, "access": e.access, "start": isoformat(e.start),
                           "end": isoformat(e.end), "at_least": e.at_least,
                           "account": e.account}
                          for e in self.exposures],
            "stale_instances": self._table(
                tables, self.stale_instances, _STALE_FIELDS,
                {"stale_since": isoformat, "hourly_cost": money}),
            "pricing": dict(self.pricing),
        }
        if self.evidence is not None:
            data["evidence"] = self.evidence.to_json_dict()
        if self.findings is not None:
            data["findings"] = [f.to_json_dict() for f in self.findings]
        if self.series is not None:
            data["series"] = self.series.to_json_dict(money)
        return data


    @staticmethod
    def _table(tables: bool, items: Sequence[Any], fields: tuple[str, ...],
               convert: dict[str, Callable[[Any], Any]]) -> Table | list[dict[str, Any]]:
        """A long list's JSON rows from its columns, each field converted once per
        distinct value (a crawl's time, a shape's price) by ``convert``'s function."""
        columns = tuple(
            mapped(column, convert[name]) if name in convert else column
            for name, column in zip(fields, columns_of(items, fields), strict=True))
        table = Table(fields, columns)
        return table if tables else table.records()


#: The JSON keys of a drift row and a stale instance: their answers' fields, in order.
_DRIFT_FIELDS: Final = ("kind", "id", "change", "field", "old", "new", "observed_at", "account")
_STALE_FIELDS: Final = ("id", "name", "status", "region", "stale_since", "at_least",
                        "hourly_cost", "account")


def _amounts(a: Amounts) -> dict[str, Any]:
    return {"total": money(a.total), "compute": money(a.compute), "storage": money(a.storage),
            "by_region": {k: money(v) for k, v in sorted(a.by_region.items())}}


def _seconds(delta: timedelta, name: str) -> float:
    if delta <= timedelta(0):
        raise UsageError(f"{name}: must be positive, got {delta}", parameter=name)
    return delta.total_seconds()


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _drift_value(field_name: str | None, text: str | None) -> Any:
    if text is None or field_name is None:
        return None
    if field_name == "cpu":
        return int(text)
    if field_name == "memory_gb":
        return float(text)
    if field_name == "tags":
        return json.loads(text)
    return text


def build_report(
    store: History,
    window: Window,
    *,
    accounts: Sequence[str] | None = None,
    stale_after: timedelta,
    pending_stale_after: timedelta,
    max_gap_instances: timedelta,
    max_gap_buckets: timedelta,
    pricing: Pricing,
    now: datetime,
    policy: Policy | None = None,
    series: bool = False,
) -> Report:
    """Answer every audit question over ``window`` (all accounts, or those named).

    With a ``policy``, the report carries its findings (``nexus_audit.audit.findings``);
    with ``series``, the daily series its charts draw (``nexus_audit.audit.series``).
    """
    values = query_values(window, stale_after=stale_after,
                          pending_stale_after=pending_stale_after,
                          max_gap_instances=max_gap_instances,
                          max_gap_buckets=max_gap_buckets, pricing=pricing)
    # The history's read() turns DuckDB's errors into StoreError.
    with collector_paused(), store.read() as con:
        report = _build(con, window, accounts, values, pricing, now)
        report = replace(report, evidence=read_evidence(con, report.accounts, window))
        if policy is not None:
            report = replace(report, findings=evaluate(con, policy, window, report.accounts))
        if series:
            report = replace(report, series=build_series(con, window, values))
        return report


def query_values(window: Window, *, stale_after: timedelta, pending_stale_after: timedelta,
                 max_gap_instances: timedelta, max_gap_buckets: timedelta,
                 pricing: Pricing) -> dict[str, Any]:
    """The values the queries bind for ``window`` (``accounts`` is added once resolved)."""
    return {
        "since": window.since, "until": window.until,
        "max_gap_instances": _seconds(max_gap_instances, "max_gap"),
        "max_gap_buckets": _seconds(max_gap_buckets, "max_gap"),
        "stale_after": _seconds(stale_after, "stale_after"),
        "pending_stale_after": _seconds(pending_stale_after, "pending_stale_after"),
        **pricing.query_values(),
    }


def prepare(con: duckdb.DuckDBPyConnection, values: dict[str, Any], pricing: Pricing,
            tables: Sequence[str] = ("obs", "instance_prices", "state_instances",
                                     "state_buckets", "exposures")) -> None:
    """Materialize the temp tables the queries build on, in order (each query file's header
    says what it needs): ``obs`` (observations), ``instance_prices``, ``state_instances``,
    ``state_buckets``, ``exposures``."""
    con.execute("CREATE OR REPLACE TEMP TABLE pricing_plans "
                "(plan VARCHAR, cpu INTEGER, memory_gb DOUBLE, hourly DOUBLE)")
    con.execute(
        "INSERT INTO pricing_plans SELECT unnest($plan), unnest($cpu), unnest($mem), "
        "unnest($hourly)",
        {"plan": [p.name for p in pricing.plans], "cpu": [p.cpu for p in pricing.plans],
         "mem": [p.memory_gb for p in pricing.plans],
         "hourly": [p.hourly for p in pricing.plans]})
    for table in tables:
        create_temp(con, table, _SOURCES[table], values)


#: The query each prepared temp table is made of.
_SOURCES: Final = {"obs": "observations", "instance_prices": "instance_prices",
                   "state_instances": "state_instances", "state_buckets": "state_buckets",
                   "exposures": "exposures"}


def _build(con: duckdb.DuckDBPyConnection, window: Window, wanted: Sequence[str] | None,
           values: dict[str, Any], pricing: Pricing, now: datetime) -> Report:
    accounts = resolve_accounts(con, wanted)
    values["accounts"] = accounts
    row = con.execute(
        """SELECT count(*), min(finished_at), max(finished_at) FROM crawls
           WHERE list_contains($accounts, account)
             AND finished_at >= $since AND finished_at < $until""",
        {"accounts": accounts, "since": window.since, "until": window.until}).fetchone()
    if not row or not row[0]:
        span = con.execute(
            "SELECT min(finished_at), max(finished_at) FROM crawls "
            "WHERE list_contains($accounts, account)", {"accounts": accounts}).fetchone()
        first, last = span if span else (None, None)
        raise NoDataError(
            f"no crawls between {isoformat(window.since)} and {isoformat(window.until)} "
            f"(history runs from {isoformat(first)} to {isoformat(last)})")

    prepare(con, values, pricing)

    crawls = _crawl_stats(con, values, window, len(accounts))
    inventory = _inventory(run_query(con, "inventory", values))
    with money_in_range():
        cost = Cost(currency=pricing.currency,
                    accrued=_split(run_query(con, "cost_accrued", values)),
                    run_rate_hourly=_split(run_query(con, "run_rate", values)))
    drift_rows = run_query(con, "drift", values, epoch_us=("observed_at",),
                           coded=_drift_coded(accounts))
    # DuckDB answers the last questions in a thread of its own (a query lets go of the
    # GIL) while this one makes the drift answers of their rows: the connection is used by
    # one thread at a time, and a second core saves most of the conversion's time.
    with ThreadPoolExecutor(1, thread_name_prefix="nexus-audit-report") as pool:
        later = pool.submit(_later_rows, con, values, window)
        try:
            drift = _drift(drift_rows, accounts)
            del drift_rows
            public_rows, exposure_rows, stale_rows = later.result()
        except BaseException:
            con.interrupt()  # e.g. Ctrl-C here: the thread's query stops too
            raise
    public = tuple(
        PublicBucket(id=i, region=r, access=acc, size_bytes=int(s), public_since=_utc(since),
                     account=a, at_least=bool(al))
        for a, i, r, acc, s, since, al in public_rows)
    exposures = tuple(
        Exposure(id=i, access=acc, start=_utc(s), end=_utc(e) if e is not None else None,
                 account=a, at_least=bool(al))
        for a, i, acc, s, e, al in exposure_rows)
    stale = _stale(stale_rows)
    return Report(generated_at=now, window=window, accounts=tuple(accounts), crawls=crawls,
                  inventory=inventory, cost=cost, drift=drift, public_buckets=public,
                  exposures=exposures, stale_instances=stale, pricing=pricing.reference())


def _later_rows(con: duckdb.DuckDBPyConnection, values: dict[str, Any], window: Window,
                ) -> tuple[list[tuple[Any, ...]], ...]:
    """The rows of the public buckets, the exposures and the stale instances."""
    return (run_query(con, "public_buckets", values),
            con.execute('SELECT account, id, access, start, "end", at_least FROM exposures '
                        "WHERE start < $until ORDER BY start, account, id",
                        {"until": window.until}).fetchall(),
            run_query(con, "stale_instances", values, epoch_us=("stale_since",)))


#: Drift fields whose old and new values are not text (``_drift_value``).
_TYPED_FIELDS: Final = frozenset({"cpu", "memory_gb", "tags"})


#: The texts of a drift row's kind, change and field (those drift.sql writes).
_DRIFT_KINDS: Final = ("instance", "bucket")
_DRIFT_CHANGES: Final = ("added", "removed", "changed")
_DRIFT_FIELD_NAMES: Final = ("name", "status", "region", "cpu", "memory_gb", "plan", "tags",
                             "access")


def _drift_coded(accounts: Sequence[str]) -> tuple[tuple[str, Sequence[str]], ...]:
    return (("kind", _DRIFT_KINDS), ("change", _DRIFT_CHANGES),
            ("field", _DRIFT_FIELD_NAMES), ("account", accounts))


def _drift(rows: list[tuple[Any, ...]], accounts: Sequence[str]) -> Rows[Drift]:
    """Drift rows (kind, account, id, change, field coded, old, new, observed_at in µs)
    as :class:`Rows` of :class:`Drift`: the columns converted a column at a time, the few
    typed values (cpu, memory, tags) one by one, each crawl's time made once."""
    if not rows:
        return Rows(Drift, ((),) * len(_DRIFT_FIELDS))
    kind_codes, account_codes, ident, change_codes, field_codes, old, new, micros = zip(
        *rows, strict=True)
    kind = decoded(kind_codes, _DRIFT_KINDS)
    account = decoded(account_codes, accounts)
    change = decoded(change_codes, _DRIFT_CHANGES)
    field_name = decoded(field_codes, _DRIFT_FIELD_NAMES)
    olds, news = list(old), list(new)
    if not _TYPED_FIELDS.isdisjoint(field_name):  # most windows change no shape or tag
        for i in [i for i, name in enumerate(field_name) if name in _TYPED_FIELDS]:
            olds[i] = _drift_value(field_name[i], olds[i])
            news[i] = _drift_value(field_name[i], news[i])
    return Rows(Drift, (kind, ident, change, field_name, olds, news,
                        mapped(micros, from_epoch_us), account))


def _stale(rows: list[tuple[Any, ...]]) -> Rows[StaleInstance]:
    """Stale instances (account, id, name, status, region, stale_since in µs, at_least,
    hourly) as :class:`Rows` of :class:`StaleInstance`, converted a column at a time."""
    if not rows:
        return Rows(StaleInstance, ((),) * len(_STALE_FIELDS))
    account, ident, name, status, region, micros, at_least, hourly = zip(*rows, strict=True)
    return Rows(StaleInstance, (ident, name, status, region, mapped(micros, from_epoch_us),
                                mapped(at_least, bool), mapped(hourly, float), account))


def _crawl_stats(con: duckdb.DuckDBPyConnection, values: dict[str, Any], window: Window,
                 n_accounts: int) -> CrawlCounts:
    rows = run_query(con, "crawls", values)
    last = [r[4] for r in rows if r[4] is not None]
    streams = con.execute(
        """SELECT count(*) FROM (SELECT DISTINCT account, kind FROM kind_crawls
           WHERE list_contains($accounts, account) AND finished_at < $until)""",
        {"accounts": values["accounts"], "until": window.until}).fetchone()
    n_streams = int(streams[0]) if streams else 0
    covered = con.execute("SELECT coalesce(sum(covered_s), 0) FROM obs").fetchone()
    gaps = tuple(Gap(a, k, _utc(s), _utc(e)) for a, k, s, e in run_query(con, "coverage", values))
    try:
        skews = tuple(
            ClockSkew(account=a, crawl_id=int(c), kinds=tuple(k), recorded_finished_at=_utc(r),
                      corrected_to=_utc(t), seconds=float(sec), detected_by_crawl=int(d))
            for a, c, k, r, t, sec, d in run_query(con, "clock_skews", values))
    except duckdb.CatalogException:
        skews = ()  # a Parquet export: no correction log (its crawls carry the new dates)
    return CrawlCounts(
        count=sum(int(r[1]) for r in rows), succeeded=sum(int(r[2]) for r in rows),
        failed=sum(int(r[3]) for r in rows),
        last_success=_utc(max(last)) if last else None,
        coverage=Coverage(covered_seconds=float(covered[0]) if covered else 0.0,
                          window_seconds=window.length.total_seconds() * n_streams,
                          gaps=gaps),
        clock_skews=skews)


def _inventory(rows: list[tuple[Any, ...]]) -> Inventory:
    by_status: dict[str, int] = {}
    by_region: dict[str, int] = {}
    buckets = 0
    size = 0
    for kind, _account, status, region, n, size_bytes in rows:
        if kind == "instance":
            by_status[status] = by_status.get(status, 0) + int(n)
            by_region[region] = by_region.get(region, 0) + int(n)
        else:
            buckets += int(n)
            size += int(size_bytes or 0)
    return Inventory(instances_by_status=dict(sorted(by_status.items())),
                     instances_by_region=dict(sorted(by_region.items())),
                     buckets_total=buckets, buckets_size_bytes=size)


def _split(rows: list[tuple[Any, ...]]) -> Amounts:
    compute = storage = 0.0
    by_region: dict[str, float] = {}
    for part, region, amount in rows:
        value = float(amount or 0.0)
        if part == "compute":
            compute += value
        else:
            storage += value
        by_region[region] = by_region.get(region, 0.0) + value
    return Amounts(compute=compute, storage=storage, by_region=dict(sorted(by_region.items())))
