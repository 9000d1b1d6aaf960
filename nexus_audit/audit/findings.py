"""Policy rules judged over history: findings with their intervals, status and exceptions.

A finding is one rule broken by one resource over a run of consecutive crawls of its
account and kind (DESIGN.md: a crawl observes the fleet at its ``finished_at``):
``first_seen`` is the first crawl that saw it, ``last_seen`` the last one before it was
fixed, the resource went away, or the window ended. A finding that was open for two days
last week shows in ``report --since 30d`` with that interval; one that came back later is
a second entry. Only findings still seen inside the window are reported (``last_seen >=
since``); ``first_seen`` may lie before it.

Status is judged at the crawls themselves: ``open``; ``accepted`` while an exception of
the policy covers the resource and has not expired; ``expired`` once the exception
covering it has lapsed (worse than open: the severity is raised one step). An exception
that expires inside an interval splits it at the expiry: an ``accepted`` entry up to the
last crawl before it, then an ``expired`` entry from the first crawl at or after it.

The runs come from ``queries/findings.sql`` (set-based, over the versions); exceptions
and the split are plain Python over plain values (:func:`judge`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import duckdb

from nexus_audit.domain.policy import RULES, Policy, Severity, Waiver, raised
from nexus_audit.domain.timeutil import Window, isoformat
from nexus_audit.history.protocol import History
from nexus_audit.history.sql import bind, create_temp, load_query

Status = Literal["open", "accepted", "expired"]
STATUSES: Final[tuple[Status, ...]] = ("open", "accepted", "expired")
#: The store's kind for each rule's resource kind.
_KIND: Final = {"instance": "instances", "bucket": "buckets"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One interval over which one resource broke one rule, with one status."""

    rule: str
    severity: Severity
    kind: str
    resource: str
    account: str
    region: str
    status: Status
    first_seen: datetime
    last_seen: datetime
    #: Still seen by the last crawl of its kind before the window's end.
    current: bool
    detail: str
    exception: Waiver | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The finding in the report JSON (the DESIGN.md keys first, then the extras)."""
        return {"rule": self.rule, "severity": self.severity, "resource": self.resource,
                "account": self.account, "status": self.status,
                "first_seen": isoformat(self.first_seen),
                "last_seen": isoformat(self.last_seen), "current": self.current,
                "kind": self.kind, "region": self.region, "detail": self.detail,
                "exception": self.exception.to_json_dict() if self.exception else None}


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """A row of ``findings.sql``: crawls ``[from_crawl, until_crawl)`` broke ``rule``."""

    rule: str
    account: str
    resource: str
    region: str
    from_crawl: int
    until_crawl: int | None
    detail: str


def judge(run: Run, times: Sequence[datetime], lo: int, hi: int,
          policy: Policy) -> list[Finding]:
    """The findings of one run, whose crawls were observed at ``times[lo:hi]`` (sorted).

    Without an exception: one ``open`` finding. With one: ``accepted`` for the crawls
    before it expires, ``expired`` for those at or after; either part may be empty.
    """
    if not 0 <= lo < hi <= len(times):
        raise ValueError(f"a run needs at least one crawl, got [{lo}, {hi})")
    rule = RULES[run.rule]
    current = run.until_crawl is None

    def finding(status: Status, start: int, end: int, ongoing: bool,
                exception: Waiver | None) -> Finding:
        return Finding(rule=rule.id,
                       severity=raised(rule.severity) if status == "expired" else rule.severity,
                       kind=rule.kind, resource=run.resource, account=run.account,
                       region=run.region, status=status, first_seen=times[start],
                       last_seen=times[end - 1], current=ongoing, detail=run.detail,
                       exception=exception)

    exception = policy.exception_for(run.account, rule.id, run.resource)
    if exception is None:
        return [finding("open", lo, hi, current, None)]
    split = bisect.bisect_left(times, exception.expires, lo, hi)
    out = []
    if split > lo:
        out.append(finding("accepted", lo, split, current and split == hi, exception))
    if split < hi:
        out.append(finding("expired", split, hi, current, exception))
    return out


def _values(policy: Policy, window: Window, accounts: Sequence[str]) -> dict[str, Any]:
    b = policy.baseline
    return {
        "accounts": list(accounts), "until": window.until,
        "check_regions": b.allowed_regions is not None,
        "allowed_regions": list(b.allowed_regions or ()),
        "check_tags": b.required_tags is not None,
        "required_tags": list(b.required_tags or ()),
        "check_size": b.max_public_bucket_bytes is not None,
        "max_public_bytes": b.max_public_bucket_bytes or 0,
        "check_stopped": b.max_stopped is not None,
        "max_stopped": b.max_stopped.total_seconds() if b.max_stopped else 0.0,
        "expiries": sorted({e.expires for e in policy.exceptions}),
    }


def evaluate(con: duckdb.DuckDBPyConnection, policy: Policy, window: Window,
             accounts: Sequence[str]) -> tuple[Finding, ...]:
    """The findings of ``accounts`` seen inside ``window``, on an open history connection.

    Ordered by first_seen, account, rule, resource. Creates the temp tables
    ``finding_crawls`` and ``finding_runs`` on ``con``.
    """
    values = _values(policy, window, accounts)
    create_temp(con, "finding_crawls", "findings_crawls", values)
    create_temp(con, "finding_runs", "findings", values)
    # Only the crawls the judge reads (see findings_times.sql), not the whole sequence:
    # positions in this shorter sequence bound the same runs and split them at the same
    # crawls.
    times: dict[tuple[str, str], list[datetime]] = {}
    position: dict[tuple[str, str], dict[int, int]] = {}
    sql = load_query("findings_times")
    for account, kind, crawl_id, t in con.execute(sql, bind(sql, values)).fetchall():
        seq = times.setdefault((account, kind), [])
        position.setdefault((account, kind), {})[int(crawl_id)] = len(seq)
        seq.append(t.astimezone(UTC))
    found: list[Finding] = []
    for rule, kind, account, ident, region, first, until, detail in con.execute(
            "SELECT rule, kind, account, id, region, from_crawl, until_crawl, detail "
            "FROM finding_runs ORDER BY account, rule, id, from_crawl").fetchall():
        key = (account, _KIND[kind])
        run = Run(rule=rule, account=account, resource=ident, region=region or "",
                  from_crawl=int(first), until_crawl=None if until is None else int(until),
                  detail=detail or "")
        seq = times[key]
        lo = position[key][run.from_crawl]
        hi = len(seq) if run.until_crawl is None else position[key][run.until_crawl]
        found.extend(f for f in judge(run, seq, lo, hi, policy)
                     if f.last_seen >= window.since)
    found.sort(key=lambda f: (f.first_seen, f.account, f.rule, f.resource))
    return tuple(found)


def evaluate_history(history: History, policy: Policy, window: Window,
                     accounts: Sequence[str] | None = None) -> tuple[Finding, ...]:
    """:func:`evaluate` on its own read connection (all accounts when none are named)."""
    with history.read() as con:  # DuckDB's errors come out of read() as StoreError
        if accounts is None:
            accounts = [r[0] for r in con.execute(
                "SELECT DISTINCT account FROM crawls ORDER BY account").fetchall()]
        return evaluate(con, policy, window, accounts)


FindingKey = tuple[str, str, str, str]


def current_counts(findings: Iterable[Finding], policy: Policy,
                   accounts: Iterable[str]) -> dict[FindingKey, int]:
    """Current findings by (account, rule, severity, status), for ``nexus_findings``.

    Every rule the policy switches on has a series per account, zero when nothing breaks
    it (``accepted`` and ``expired`` only for bucket rules, the ones exceptions cover), so
    alerts and dashboards see 0 rather than no data.
    """
    counts: dict[FindingKey, int] = {}
    for account in accounts:
        for rule_id in policy.rules:
            rule = RULES[rule_id]
            for status in STATUSES if rule.kind == "bucket" else ("open",):
                severity = raised(rule.severity) if status == "expired" else rule.severity
                counts[(account, rule_id, severity, status)] = 0
    for f in findings:
        if f.current:
            key = (f.account, f.rule, f.severity, f.status)
            counts[key] = counts.get(key, 0) + 1
    return counts


def summary(findings: Iterable[Finding]) -> Mapping[Status, int]:
    """How many findings have each status."""
    counts: dict[Status, int] = dict.fromkeys(STATUSES, 0)
    for f in findings:
        counts[f.status] += 1
    return counts
