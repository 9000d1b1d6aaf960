"""Reading the latest committed state (what ``/metrics`` shows), as plain values."""

# S608: only our own identifiers (column names, generated aliases) are formatted into SQL;
# every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, NamedTuple

import duckdb

from nexus_audit.domain.model import Bucket, Instance, Kind
from nexus_audit.errors import NoDataError, UnknownAccountError
from nexus_audit.history.schema import BUCKET_COLUMNS, INSTANCE_COLUMNS

# ---------------------------------------------------------------------------------------
# Values handed to other layers.


@dataclass(frozen=True, slots=True, kw_only=True)
class CrawlInfo:
    """The last crawl of one kind of one account, for the exporter's health metrics."""

    crawl_id: int
    status: str
    started_at: datetime
    finished_at: datetime
    seconds: float
    requests: int
    retries: int
    total_mismatch: str | None
    error_code: str | None
    requests_by_endpoint: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


class InstanceGroup(NamedTuple):
    """Current instances of one account alike in region, status and shape, counted."""

    region: str
    status: str
    plan: str | None
    cpu: int
    memory_gb: float
    number: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountState:
    """One account's latest committed state: what ``/metrics`` shows."""

    account: str
    #: As of the latest successful crawl that covered instances (empty if none yet).
    instances: tuple[Instance, ...]
    #: As of the latest successful crawl that covered buckets (empty if none yet).
    buckets: tuple[Bucket, ...]
    instances_as_of: datetime | None
    buckets_as_of: datetime | None
    #: The last crawl (any status) that covered each kind.
    last_crawl: Mapping[Kind, CrawlInfo]
    #: ``finished_at`` of the last successful crawl of each kind.
    last_success: Mapping[Kind, datetime]
    #: Number of crawls of this account by status (``succeeded``, ``failed``).
    crawls_by_status: Mapping[str, int]
    #: Crawls re-dated because the clock stepped back (``clock_skews``), by kind covered.
    clock_corrections: Mapping[Kind, int] = field(default_factory=dict)
    #: The instances as counts by region, status and shape, when read without their
    #: records (``instances`` is then empty; see :func:`read_latest`).
    instance_groups: tuple[InstanceGroup, ...] = ()


def _of_accounts(column: str = "account") -> str:
    """The condition that ``column`` is one of ``$accounts`` (any account when NULL)."""
    return f"($accounts IS NULL OR list_contains($accounts::VARCHAR[], {column}))"


_ACCOUNTS: Final = _of_accounts()
_COUNTS: Final = f"SELECT account, status, count(*) FROM crawls WHERE {_ACCOUNTS} GROUP BY ALL"
_LAST_CRAWLS: Final = f"""
    SELECT account, kind, crawl_id, status, started_at, finished_at, requests, retries,
           total_mismatch, error_code, requests_by_endpoint
    FROM (SELECT c.*, unnest(c.kinds) AS kind FROM crawls c WHERE {_ACCOUNTS})
    QUALIFY row_number() OVER (PARTITION BY account, kind ORDER BY crawl_id DESC) = 1"""
_LAST_SUCCESS: Final = f"""
    SELECT account, kind, max(finished_at) FROM
        (SELECT account, unnest(kinds) AS kind, finished_at FROM crawls
         WHERE status = 'succeeded' AND {_ACCOUNTS})
    GROUP BY ALL"""
_CLOCK_CORRECTIONS: Final = f"""
    SELECT s.account, k.kind, count(*) FROM clock_skews s
    JOIN (SELECT crawl_id, unnest(kinds) AS kind FROM crawls) k USING (crawl_id)
    WHERE {_of_accounts("s.account")}
    GROUP BY ALL"""


#: The current instances counted by region, status and shape (the rows of a fleet of a
#: million: a few hundred).
_INSTANCE_GROUPS: Final = f"""
    SELECT account, region, status, plan, cpu, memory_gb, count(*) FROM instance_versions
    WHERE until_crawl IS NULL AND {_ACCOUNTS} GROUP BY ALL ORDER BY ALL"""


def read_latest(con: duckdb.DuckDBPyConnection, kinds: frozenset[Kind], *,
                records: bool = True,
                accounts: Sequence[str] | None = None) -> list[AccountState]:
    """The latest state of ``accounts`` (every account when None), with the records of
    ``kinds``; without ``records``, the instances come as :class:`InstanceGroup` counts
    instead (reading a million instance records into Python took 4.5 s of CPU, counting
    them 0.1 s)."""
    which = {"accounts": None if accounts is None else list(accounts)}
    counts: dict[str, dict[str, int]] = {}
    for account, status, n in con.execute(_COUNTS, which).fetchall():
        counts.setdefault(account, {})[status] = int(n)
    last: dict[str, dict[Kind, CrawlInfo]] = {}
    for row in con.execute(_LAST_CRAWLS, which).fetchall():
        (account, kind, crawl_id, status, started, finished, requests, retries,
         mismatch, code, rbe) = row
        last.setdefault(account, {})[kind] = CrawlInfo(
            crawl_id=int(crawl_id), status=status, started_at=_utc(started),
            finished_at=_utc(finished), seconds=(finished - started).total_seconds(),
            requests=int(requests), retries=int(retries), total_mismatch=mismatch,
            error_code=code, requests_by_endpoint=json.loads(rbe) if rbe else {})
    success: dict[str, dict[Kind, datetime]] = {}
    for account, kind, finished in con.execute(_LAST_SUCCESS, which).fetchall():
        success.setdefault(account, {})[kind] = _utc(finished)
    corrections: dict[str, dict[Kind, int]] = {}
    for account, kind, n in con.execute(_CLOCK_CORRECTIONS, which).fetchall():
        corrections.setdefault(account, {})[kind] = int(n)
    instances: dict[str, list[Instance]] = {}
    cols = ", ".join(INSTANCE_COLUMNS)
    make_instance = Instance._make
    rows = (con.execute(
        f"SELECT account, {cols} FROM instance_versions WHERE until_crawl IS NULL "
        f"AND {_ACCOUNTS} ORDER BY account, id", which).fetchall()
        if "instances" in kinds and records else [])
    for account, *fields in rows:
        instances.setdefault(account, []).append(make_instance(fields))
    groups: dict[str, list[InstanceGroup]] = {}
    rows = (con.execute(_INSTANCE_GROUPS, which).fetchall()
            if "instances" in kinds and not records else [])
    for account, *fields in rows:
        groups.setdefault(account, []).append(InstanceGroup._make(fields))
    buckets: dict[str, list[Bucket]] = {}
    bcols = ", ".join("s.size_bytes" if c == "size_bytes" else f"v.{c}" for c in BUCKET_COLUMNS)
    make_bucket = Bucket._make
    rows = (con.execute(
        f"""SELECT v.account, {bcols} FROM bucket_versions v
            JOIN bucket_sizes s ON s.account = v.account AND s.id = v.id
                AND s.until_crawl IS NULL
            WHERE v.until_crawl IS NULL AND {_of_accounts("v.account")}
            ORDER BY v.account, v.id""", which).fetchall()
        if "buckets" in kinds else [])
    for account, *fields in rows:
        buckets.setdefault(account, []).append(make_bucket(fields))
    states = []
    for account in sorted(counts):
        ok = success.get(account, {})
        states.append(AccountState(
            account=account,
            instances=tuple(instances.get(account, ())),
            buckets=tuple(buckets.get(account, ())),
            instances_as_of=ok.get("instances"),
            buckets_as_of=ok.get("buckets"),
            last_crawl=last.get(account, {}),
            last_success=ok,
            crawls_by_status=counts[account],
            clock_corrections=corrections.get(account, {}),
            instance_groups=tuple(groups.get(account, ())),
        ))
    return states


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def resolve_accounts(con: duckdb.DuckDBPyConnection, wanted: Sequence[str] | None) -> list[str]:
    """The accounts a question is about: those named (sorted), or every account the history
    knows. An empty history raises :class:`NoDataError`, an account it has never seen
    :class:`UnknownAccountError` (naming the known ones)."""
    known = [r[0] for r in con.execute(
        "SELECT DISTINCT account FROM crawls ORDER BY account").fetchall()]
    if not known:
        raise NoDataError("the history is empty: no crawl has been recorded yet "
                          "(run `nexus-audit crawl` or `serve` first)")
    for name in wanted or ():
        if name not in known:
            raise UnknownAccountError(name, known)
    return sorted(set(wanted)) if wanted else known
