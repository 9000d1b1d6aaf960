"""How a commit writes: set-based statements and column-list appends that advance the
logs, the compaction that closes versions, and what a commit checks first."""

# S608: only our own identifiers (column names, generated aliases) are formatted into SQL;
# every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import duckdb

from nexus_audit.domain.model import KINDS, CrawlSummary, Kind
from nexus_audit.history import duckfile
from nexus_audit.history.plain import optimized
from nexus_audit.history.schema import (
    BUCKET_COLUMNS,
    BUCKET_VERSION_COLUMNS,
    COMPACTED_KEY,
    INSTANCE_COLUMNS,
    Record,
)
from nexus_audit.history.sealing import Plan
from nexus_audit.history.staging import SIZE_FIELD, bucket_fingerprint

#: The log table behind each version view (schema 3).
LOGS: Final = {"instance_versions": "instance_log", "bucket_versions": "bucket_log",
               "bucket_sizes": "bucket_size_log"}
#: Per kind, the version views a crawl of it advances.
VIEWS: Final[Mapping[Kind, tuple[str, ...]]] = {
    "instances": ("instance_versions",), "buckets": ("bucket_versions", "bucket_sizes")}


def _apply_sql(kind: Kind) -> tuple[str, ...]:
    """Set-based statements that advance one kind's history with one successful crawl.

    Parameters: ``$a`` account, ``$c`` crawl id. ``@new@`` is the staged table and ``@h@``
    the database's alias. Only appends: a record identical to its current version adds
    nothing; any other record adds a version (which ends the one before); an id absent
    from the crawl gets a removal marker (which ends its version).
    """
    def mark(view: str) -> str:
        return f"""INSERT INTO @h@.{LOGS[view]} (account, id, first_crawl, until_crawl, removed)
                   SELECT $a, v.id, $c, NULL, true FROM @h@.{view} v
                   WHERE v.account = $a AND v.until_crawl IS NULL
                     AND NOT EXISTS (SELECT 1 FROM @new@ n WHERE n.id = v.id)"""

    def add(view: str, cols: Sequence[str], same: str) -> str:
        col_list = ", ".join(cols)
        n_cols = ", ".join(f"n.{c}" for c in cols)
        return f"""INSERT INTO @h@.{LOGS[view]}
                       (account, {col_list}, first_crawl, until_crawl, removed)
                   SELECT $a, {n_cols}, $c, NULL, false FROM @new@ n
                   WHERE NOT EXISTS (SELECT 1 FROM @h@.{view} v
                       WHERE v.account = $a AND v.id = n.id AND v.until_crawl IS NULL
                         AND {same})"""

    def same(cols: Sequence[str]) -> str:
        return " AND ".join(f"n.{c} IS NOT DISTINCT FROM v.{c}" for c in cols[1:])

    if kind == "instances":
        return (mark("instance_versions"),
                add("instance_versions", INSTANCE_COLUMNS, same(INSTANCE_COLUMNS)))
    return (mark("bucket_versions"),
            add("bucket_versions", BUCKET_VERSION_COLUMNS, same(BUCKET_VERSION_COLUMNS)),
            mark("bucket_sizes"),
            add("bucket_sizes", ("id", "size_bytes"), "n.size_bytes = v.size_bytes"))


APPLY: Final = {kind: _apply_sql(kind) for kind in KINDS}

#: Per version view: its record columns and their positions in the staged record.
_TABLE_FIELDS: Final = {
    "instance_versions": tuple((c, INSTANCE_COLUMNS.index(c)) for c in INSTANCE_COLUMNS),
    "bucket_versions": tuple((c, BUCKET_COLUMNS.index(c)) for c in BUCKET_VERSION_COLUMNS),
    "bucket_sizes": (("id", 0), ("size_bytes", SIZE_FIELD)),
}


def _append_sql(view: str) -> str:
    """Append versions and removal markers to ``view``'s log from column lists (``$f0``,
    ``$f1``, ... and the markers' flags ``$rm``) zipped by ``unnest``.

    The lists are not cast (``$f0::VARCHAR[]``): a cast of a list parameter costs about a
    tenth of a millisecond a column, a third of the statement, while the INSERT casts each
    value to its column's type anyway (and refuses one that does not fit, as the cast
    would). A list of only NULLs (a column no record has) converts to ``NULL[]``.
    """
    fields = _TABLE_FIELDS[view]
    col_list = ", ".join(c for c, _ in fields)
    lists = ", ".join(f"unnest($f{n})" for n in range(len(fields)))
    return f"""INSERT INTO @h@.{LOGS[view]}
                   (account, {col_list}, first_crawl, until_crawl, removed)
               SELECT $a, {lists}, $c, NULL, unnest($rm)"""


APPEND: Final = {view: _append_sql(view) for view in _TABLE_FIELDS}


def append_params(view: str, records: Sequence[Record],
                   removed: Sequence[str]) -> dict[str, list[Any]]:
    """The column lists of ``records`` and of markers for ``removed`` for :func:`_append_sql`."""
    params: dict[str, list[Any]] = {}
    blanks = [None] * len(removed)
    for n, (_, i) in enumerate(_TABLE_FIELDS[view]):
        params[f"f{n}"] = [r[i] for r in records] + (list(removed) if i == 0 else blanks)
    params["rm"] = [False] * len(records) + [True] * len(removed)
    return params


def diff_plan(kind: Kind, base: Mapping[str, object], changed: Sequence[Record],
               removed: Sequence[str]) -> dict[str, tuple[list[Record], list[str]]]:
    """Per version view, the records to add as versions and the ids to mark removed."""
    if kind == "instances":
        return {"instance_versions": (list(changed), list(removed))}
    versions: list[Record] = []
    sizes: list[Record] = []
    for record in changed:
        old = base.get(record[0])
        version, size = bucket_fingerprint(record)  # type: ignore[arg-type]
        if old is None or old[0] != version:  # type: ignore[index]
            versions.append(record)
        if old is None or old[1] != size:  # type: ignore[index]
            sizes.append(record)
    return {"bucket_versions": (versions, list(removed)),
            "bucket_sizes": (sizes, list(removed))}


def _compact_sql(log: str) -> str:
    """Fill in ``until_crawl`` of ``log``'s versions that a later version or a removal marker
    ended, and close the markers themselves (their work done): afterwards only current
    versions are open. The views give the same answers before and after.

    Only the ids with rows after the log's mark (:data:`_MARK`) can have a version to end
    or a marker to close (every row at or before it is compacted): the window runs over
    their open rows alone, a crawl's changes, not over every current version (a million
    at a fleet of a million: half a second of CPU each commit).
    """
    key = COMPACTED_KEY.format(log=log)
    mark = f"coalesce((SELECT CAST(value AS BIGINT) FROM @h@.meta WHERE key = '{key}'), -1)"
    return f"""UPDATE @h@.{log} AS v SET until_crawl = n.until_crawl FROM (
            SELECT account, id, first_crawl,
                   CASE WHEN next IS NOT NULL THEN next WHEN removed THEN first_crawl END
                       AS until_crawl
            FROM (SELECT account, id, first_crawl, removed,
                         lead(first_crawl) OVER (PARTITION BY account, id
                                                 ORDER BY first_crawl) AS next
                  FROM @h@.{log} l SEMI JOIN (
                      SELECT account, id FROM @h@.{log}
                      WHERE until_crawl IS NULL AND first_crawl > {mark}) r
                      ON r.account = l.account AND r.id = l.id
                  WHERE l.until_crawl IS NULL)) n
        WHERE v.until_crawl IS NULL AND n.until_crawl IS NOT NULL
          AND v.account = n.account AND v.id = n.id AND v.first_crawl = n.first_crawl"""


_COMPACT: Final = {log: _compact_sql(log) for log in LOGS.values()}
#: The mark a compaction leaves (schema 6's views read it): the log's last first_crawl,
#: at or before which every row of it is now compacted.
_MARK: Final = {log: f"""INSERT OR REPLACE INTO @h@.meta
        SELECT '{COMPACTED_KEY.format(log=log)}', CAST(max(first_crawl) AS VARCHAR)
        FROM @h@.{log} HAVING count(*) > 0""" for log in LOGS.values()}
#: The memo key of the logs appended to since the last compaction.
DIRTY: Final = "dirty"


@contextlib.contextmanager
def transaction(cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One transaction on ``cursor``: committed when the block ends, rolled back if it raises.

    The connection's own ``begin``/``commit`` skip the parser: about 0.2 ms a commit less
    than the statements' text.
    """
    cursor.begin()
    try:
        yield
        cursor.commit()
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            cursor.rollback()
        raise


def appended_logs(kinds: Sequence[Kind], plans: Mapping[Kind, Plan | None]) -> set[str]:
    """The logs a successful commit appended to: per kind, every log of a set-based commit
    (``plans[kind]`` None: its statements may have added rows anywhere), else those of
    the views its plan gave records or removals. The others have nothing to compact: an
    hourly crawl that changed no bucket's access leaves ``bucket_log`` as it was, and a
    lone commit of an unchanged fleet runs no compaction at all."""
    logs: set[str] = set()
    for kind in kinds:
        plan = plans.get(kind)
        for view in VIEWS[kind]:
            if plan is None or any(plan.get(view, ((), ()))):
                logs.add(LOGS[view])
    return logs


def compact(commit: duckfile.Commit) -> None:
    """Compact the logs appended to while the file was attached (before it is let go)."""
    dirty = commit.memo.get(DIRTY)
    if not dirty:
        return
    optimized(commit.cursor, commit.memo)
    with transaction(commit.cursor):
        for log in sorted(dirty):
            compact_log(commit, log)
    dirty.clear()


def compact_log(commit: duckfile.Commit, log: str) -> None:
    """Compact ``log`` now, inside the caller's transaction.

    A large set-based commit does so for each view it seals in full, before reading the
    view back: compacted, the view reads its current rows as they are, where before it
    ran its window over every open row after the mark (a first commit: the whole fleet,
    which the compaction before the file is let go sorted once more). Compacting is
    idempotent, so that later compaction finds the log as it leaves it.
    """
    cursor, h = commit.cursor, commit.alias
    optimized(cursor, commit.memo)
    cursor.execute(_COMPACT[log].replace("@h@", h))
    cursor.execute(_MARK[log].replace("@h@", h))




#: What a commit checks before writing: the schema version, the latest crawl id, and per
#: kind (in :data:`KINDS` order) the account's latest successful crawl, its end, and the
#: latest end of any crawl. One statement, aggregated over every crawl.
WRITE_STATE: Final = """
    SELECT (SELECT value FROM @h@.meta WHERE key = 'schema_version'), * FROM (
        SELECT max(crawl_id),
               max(crawl_id) FILTER (account = $a AND status = 'succeeded'
                                     AND list_contains(kinds, 'instances')),
               max(finished_at) FILTER (account = $a AND status = 'succeeded'
                                        AND list_contains(kinds, 'instances')),
               max(finished_at) FILTER (account = $a AND list_contains(kinds, 'instances')),
               max(crawl_id) FILTER (account = $a AND status = 'succeeded'
                                     AND list_contains(kinds, 'buckets')),
               max(finished_at) FILTER (account = $a AND status = 'succeeded'
                                        AND list_contains(kinds, 'buckets')),
               max(finished_at) FILTER (account = $a AND list_contains(kinds, 'buckets'))
        FROM @h@.crawls)"""
#: The same from the crawls since the oldest snapshot's, which is no earlier than anything
#: the answers for the snapshots' kinds depend on (along one account and kind's crawl ids,
#: ``finished_at`` never decreases: see :func:`redate`): usually one row, and a plain scan
#: costs a fraction of the aggregates above. The latest crawl's manifest columns come
#: along, so a fresh attach learns the chain's head without a query of its own (see
#: :func:`nexus_audit.history.sealing.head_from_rows`).
CRAWLS_SINCE: Final = """
    SELECT (SELECT value FROM @h@.meta WHERE key = 'schema_version'), crawl_id, account,
           status, kinds, finished_at, manifest_seq, manifest_hash, manifest IS NOT NULL
    FROM @h@.crawls WHERE crawl_id >= $s"""
#: The memo key of the latest crawl id (see :meth:`Store._tail`).
LAST_ID: Final = "last_id"


@dataclass(frozen=True, slots=True)
class Tail:
    """Where the history ends, for a commit: the latest crawl id, and per kind committed
    the account's latest successful crawl, when it finished, and when the latest crawl of
    any status finished."""

    last_id: int
    crawl: dict[Kind, int | None]
    end: dict[Kind, datetime | None]
    any_end: dict[Kind, datetime | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockSkew:
    """One crawl re-dated because a crawl committed after it finished earlier."""

    crawl_id: int
    account: str
    kinds: tuple[str, ...]
    recorded_started_at: datetime
    recorded_finished_at: datetime
    corrected_to: datetime
    detected_by_crawl: int
    detected_at: datetime

    @property
    def seconds(self) -> float:
        """How far the crawl was moved back."""
        return (self.recorded_finished_at - self.corrected_to).total_seconds()


def redate(commit: duckfile.Commit, account: str, kinds: Sequence[Kind], end: datetime,
           crawl_id: int, now: datetime) -> list[ClockSkew]:
    """Re-date the crawls committed before ``crawl_id`` that finished after ``end`` (inside
    the commit's transaction); the corrections, also kept in ``clock_skews``.

    A crawl committed earlier observed the fleet no later than one committed after it, so
    a later ``finished_at`` there can only come from a clock that stepped back since: each
    such crawl of the account covering ``kinds`` gets ``end`` (and a ``started_at`` no
    later). A re-dated crawl that also covers another kind pulls that kind's earlier
    crawls past ``end`` along with it, so ``finished_at`` never decreases along any of
    the account's kinds.
    """
    cursor, h = commit.cursor, commit.alias
    optimized(cursor, commit.memo)
    rows = cursor.execute(
        f"""SELECT crawl_id, kinds, started_at, finished_at FROM {h}.crawls
            WHERE account = $a AND finished_at > $t AND crawl_id < $c
            ORDER BY crawl_id DESC""", {"a": account, "t": end, "c": crawl_id}).fetchall()
    # reach[kind]: the crawls of that kind with a smaller id than this are re-dated.
    reach: dict[str, int] = dict.fromkeys(kinds, crawl_id)
    chosen: dict[int, ClockSkew] = {}
    for ident, covered, started, finished in rows:
        # Newest first, so each kind's reach is final before smaller ids come.
        if any(ident < reach.get(k, -1) for k in covered):
            chosen[int(ident)] = ClockSkew(
                crawl_id=int(ident), account=account, kinds=tuple(covered),
                recorded_started_at=started.astimezone(UTC),
                recorded_finished_at=finished.astimezone(UTC),
                corrected_to=end, detected_by_crawl=crawl_id, detected_at=now)
            for k in covered:
                reach[k] = max(reach.get(k, -1), int(ident))
    skews = sorted(chosen.values(), key=lambda s: s.crawl_id)
    if not skews:
        return []
    ids = [s.crawl_id for s in skews]
    cursor.execute(
        f"""INSERT INTO {h}.clock_skews
            SELECT unnest($ids), $a, unnest($starts), unnest($ends), $t, $c, $now""",
        {"ids": ids, "a": account, "starts": [s.recorded_started_at for s in skews],
         "ends": [s.recorded_finished_at for s in skews], "t": end, "c": crawl_id,
         "now": now})
    cursor.execute(
        f"""UPDATE {h}.crawls SET started_at = least(started_at, $t), finished_at = $t
            WHERE crawl_id IN (SELECT unnest($ids))""", {"t": end, "ids": ids})
    return skews


INSERT_CRAWL: Final = """
    INSERT INTO @h@.crawls (crawl_id, account, kinds, started_at, finished_at, status,
        instances, buckets, requests, retries, total_mismatch, error, error_code, request_id,
        requests_by_endpoint, manifest_seq, manifest_hash, manifest)
    VALUES ($c, $account, $kinds, $started_at, $finished_at, $status, $instances, $buckets,
        $requests, $retries, $total_mismatch, $error, $error_code, $request_id, $rbe,
        $manifest_seq, $manifest_hash, $manifest)"""


def crawl_row_params(summary: CrawlSummary, kinds: Sequence[Kind],
                     crawl_id: int) -> dict[str, Any]:
    """The crawl's row, as :data:`INSERT_CRAWL`'s parameters."""
    return {
        "c": crawl_id, "account": summary.account, "kinds": list(kinds),
        "started_at": summary.started_at, "finished_at": summary.finished_at,
        "status": summary.status, "instances": summary.instances,
        "buckets": summary.buckets, "requests": summary.requests,
        "retries": summary.retries, "total_mismatch": summary.total_mismatch,
        "error": summary.error, "error_code": summary.error_code,
        "request_id": summary.request_id,
        "rbe": _SORTED_JSON.encode({k: dict(v)
                                    for k, v in summary.requests_by_endpoint.items()}),
    }


#: ``json.dumps(..., sort_keys=True)``'s encoder, built once rather than per commit (the
#: same text).
_SORTED_JSON: Final = json.JSONEncoder(sort_keys=True)


def write_failure(path: object, exc: duckdb.Error) -> str:
    """The message of a commit that DuckDB refused (the disk full named as such)."""
    text = str(exc)
    if "No space left" in text or ("disk" in text.lower() and "full" in text.lower()):
        return f"cannot write {path}: the disk is full; the crawl was not recorded ({text})"
    return f"cannot write {path}: {text}; the crawl was not recorded"


def as_failed(summary: CrawlSummary) -> CrawlSummary:
    """``summary`` recorded as a failed crawl (with an error message, if it had none)."""
    return dataclasses.replace(summary, status="failed", error=summary.error
                               or "recorded as failed without an error message")


def parsed(commit: duckfile.Commit, sql: str) -> duckdb.Statement:
    """``sql`` (one statement, on this attachment's alias) parsed once per hold of the file.

    A parsed statement runs about 0.2 ms faster than its text, three or four times a
    commit; the alias changes with each attach, and the memo with it.
    """
    key = ("parsed", sql)
    statement: duckdb.Statement | None = commit.memo.get(key)
    if statement is None:
        (statement,) = commit.cursor.extract_statements(sql)
        commit.memo[key] = statement
    return statement





def state_from_rows(rows: Sequence[tuple[Any, ...]], account: str) -> tuple[Any, ...] | None:
    """:data:`WRITE_STATE`'s answer computed from :data:`CRAWLS_SINCE`'s rows (None: no rows)."""
    if not rows:
        return None
    per_kind: list[Any] = []
    for kind in KINDS:
        covering = [row for row in rows if row[2] == account and kind in row[4]]
        ours = [row for row in covering if row[3] == "succeeded"]
        per_kind += [max((row[1] for row in ours), default=None),
                     max((row[5] for row in ours), default=None),
                     max((row[5] for row in covering), default=None)]
    return (rows[0][0], max(row[1] for row in rows), *per_kind)
