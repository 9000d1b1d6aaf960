"""Verifying the evidence chain against the stored history (``nexus-audit verify``).

Every manifest is recomputed from what the database holds now and compared with the one
sealed at commit: the chain's links (each manifest's hash and its successor's ``prev``),
each crawl's row, and per successful crawl the state sums of the views its kinds cover,
computed from the views exactly as every report reads them. The sums are swept over the
crawls in order (a row adds its element at its ``first_crawl`` and takes it away at its
``until_crawl``), so a year of hourly history costs one pass over its rows, not one per
crawl. The answer names the first crawl whose history no longer matches.
"""

# S608: only our own identifiers (column names) are formatted into SQL; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from nexus_audit.domain.model import KINDS, Kind
from nexus_audit.errors import NexusAuditError
from nexus_audit.history.chain import (
    CRAWL_COLUMNS,
    KIND_VIEWS,
    LOG_COLUMNS,
    SKEW_COLUMNS,
    VIEW_COLUMNS,
    StateSum,
    canonical,
    correction,
    crawl_row,
    element,
    log_line,
    table_digest,
)


class ChainBrokenError(NexusAuditError):
    """The stored history no longer matches the evidence chain sealed when it was written."""

    def __init__(self, crawl_id: int | None, message: str) -> None:
        super().__init__(message)
        #: The first crawl whose history no longer matches (None: the genesis).
        self.crawl_id = crawl_id


@dataclass(frozen=True, slots=True)
class Verified:
    """What :func:`verify_history` checked."""

    #: Crawl manifests recomputed and matched (within ``since``/``account``).
    crawls: int
    #: The last manifest's hash (None: an empty chain).
    head: str | None
    #: Whether the chain starts with a genesis over earlier history.
    genesis: bool


@dataclass(frozen=True, slots=True)
class _Manifest:
    seq: int
    crawl_id: int | None
    hash: str
    body: dict[str, Any]


_Failure = tuple[int, str]  # (crawl id, what) ; the genesis is crawl -1 here


def _load_manifests(con: duckdb.DuckDBPyConnection,
                    failures: list[_Failure]) -> list[_Manifest]:
    rows = con.execute("SELECT seq, crawl_id, hash, body FROM manifests "
                       "ORDER BY seq, crawl_id NULLS FIRST").fetchall()
    out: list[_Manifest] = []
    for seq, crawl_id, stored_hash, text in rows:
        where = -1 if crawl_id is None else int(crawl_id)
        if hashlib.sha256(str(text).encode("utf-8")).hexdigest() != stored_hash:
            failures.append((where, "its manifest was edited (the body no longer hashes to "
                                    "the stored hash)"))
        try:
            body = json.loads(text)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            failures.append((where, "its manifest is not a JSON object"))
            body = {}
        out.append(_Manifest(int(seq), None if crawl_id is None else int(crawl_id),
                             str(stored_hash), body))
    return out


def _check_links(manifests: Sequence[_Manifest], crawls: Mapping[int, Any],
                 failures: list[_Failure]) -> None:
    """Each manifest follows the one before: its seq, its ``prev``, rising crawl ids; a
    crawl whose row is gone is named from its successor's ``prev_crawl``."""
    prev: str | None = None
    expected = 0 if manifests and manifests[0].seq == 0 else 1
    last_crawl = -1
    for m in manifests:
        where = -1 if m.crawl_id is None else m.crawl_id
        if m.seq != expected or m.body.get("seq") != m.seq:
            failures.append((where, f"the chain is out of order at seq {m.seq} (expected "
                                    f"{expected}): a manifest was removed, inserted or moved"))
            expected = m.seq
        gone = m.body.get("prev_crawl")
        if isinstance(gone, int) and gone not in crawls:
            failures.append((gone, f"it was removed (crawl {m.crawl_id}'s manifest follows it)"))
        elif m.body.get("prev") != prev:
            failures.append((where, "its manifest does not follow the previous one (prev "
                                    "hash differs): the chain was cut, reordered or spliced"))
        if m.crawl_id is not None:
            if m.crawl_id <= last_crawl:
                failures.append((where, "the chain is out of crawl order"))
            last_crawl = m.crawl_id
        prev = m.hash
        expected += 1


def _skews(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The recorded clock corrections (none before the table exists), oldest first."""
    found = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'clock_skews'"
                        ).fetchone()
    if not found or not found[0]:
        return []
    rows = con.execute(f"SELECT {', '.join(SKEW_COLUMNS)}, detected_by_crawl FROM clock_skews "
                       "ORDER BY detected_by_crawl, crawl_id").fetchall()
    return [{**correction(dict(zip(SKEW_COLUMNS, r[:-1], strict=True))),
             "detected_by_crawl": int(r[-1])} for r in rows]


def _as_committed(row: Mapping[str, Any], skews: Sequence[Mapping[str, Any]],
                  failures: list[_Failure]) -> dict[str, Any]:
    """A crawl's row as it was committed: the times it had before the first correction
    that re-dated it (the row must now carry the last correction's time)."""
    committed = crawl_row(row)
    mine = [s for s in skews if s["crawl_id"] == committed["crawl_id"]]
    if mine:
        if committed["finished_at"] != mine[-1]["corrected_to"]:
            failures.append((committed["crawl_id"], "its times differ from the last clock "
                                                    "correction recorded for it"))
        committed["started_at"] = mine[0]["recorded_started_at"]
        committed["finished_at"] = mine[0]["recorded_finished_at"]
    return committed


def _crawls(con: duckdb.DuckDBPyConnection) -> dict[int, dict[str, Any]]:
    rows = con.execute(f"SELECT {', '.join(CRAWL_COLUMNS)} FROM crawls "
                       "ORDER BY crawl_id").fetchall()
    return {int(r[0]): dict(zip(CRAWL_COLUMNS, r, strict=True)) for r in rows}


def _check_genesis(con: duckdb.DuckDBPyConnection, m: _Manifest,
                   crawls: Mapping[int, Mapping[str, Any]], skews: Sequence[Mapping[str, Any]],
                   failures: list[_Failure]) -> int:
    """Recompute a genesis; returns the last crawl it covers."""
    body = m.body.get("genesis")
    if not isinstance(body, dict) or not isinstance(body.get("through_crawl"), int):
        failures.append((-1, "the genesis manifest is malformed"))
        return -1
    through: int = body["through_crawl"]
    # Crawls re-dated after the genesis are hashed as they were when it was sealed.
    later = [s for s in skews if s["detected_by_crawl"] > through]
    found = {"crawls": table_digest(canonical(_as_committed(c, later, failures))
                                    for i, c in crawls.items() if i <= through)}
    for table, cols in LOG_COLUMNS.items():
        rows = con.execute(f"SELECT {', '.join(cols)} FROM {table} WHERE first_crawl <= $t",
                           {"t": through}).fetchall()
        found[table] = table_digest(log_line(table, row) for row in rows)
    for name, digest in found.items():
        if body.get(name) != digest:
            failures.append((-1, f"the history sealed by the genesis (crawls up to "
                                 f"{through}) changed: {name} differs"))
    return through


def _sweep(con: duckdb.DuckDBPyConnection, view: str, kind: Kind,
           crawls: Mapping[int, Mapping[str, Any]], sealed: Mapping[int, _Manifest],
           checked: set[int], account: str | None, failures: list[_Failure]) -> None:
    """Recompute ``view``'s state sum as of each successful crawl of its kind, in order,
    and compare it with the manifests in ``checked``."""
    cols = VIEW_COLUMNS[view]
    where = "" if account is None else "WHERE account = $a"
    rows = con.execute(f"SELECT account, {', '.join(cols)}, first_crawl, until_crawl "
                       f"FROM {view} {where}",
                       {} if account is None else {"a": account}).fetchall()
    by_account: dict[str, list[tuple[int, int | None, bytes]]] = defaultdict(list)
    for row in rows:
        acct = str(row[0])
        by_account[acct].append((int(row[-2]), None if row[-1] is None else int(row[-1]),
                                 element(acct, view, row[1:-2])))
    observed: dict[str, list[int]] = defaultdict(list)
    for crawl_id, c in crawls.items():
        if c["status"] == "succeeded" and kind in c["kinds"]:
            observed[str(c["account"])].append(crawl_id)
    for acct in sorted(set(by_account) | {a for a, ids in observed.items() if ids}):
        if account is not None and acct != account:
            continue
        ids = sorted(observed.get(acct, []))
        known = set(ids)
        entries = by_account.get(acct, [])
        for first, _until, _e in entries:
            if first not in known:
                failures.append((first, f"{view} holds a row of {acct} first observed by "
                                        f"crawl {first}, which made no such observation"))
        starts = sorted(entries, key=lambda e: e[0])
        ends = sorted((e for e in entries if e[1] is not None), key=lambda e: e[1] or 0)
        total = StateSum()
        s = e = 0
        for crawl_id in ids:
            while s < len(starts) and starts[s][0] <= crawl_id:
                total.add(starts[s][2])
                s += 1
            while e < len(ends) and (ends[e][1] or 0) <= crawl_id:
                if ends[e][0] <= crawl_id:  # ended before it began: never counted
                    total.remove(ends[e][2])
                e += 1
            if crawl_id not in checked:
                continue
            m = sealed.get(crawl_id)
            stated = (m.body.get("state") or {}).get(view) if m else None
            if stated != total.as_json():
                failures.append((crawl_id, f"its {view} no longer match what it observed "
                                           f"(a row was edited, deleted or inserted)"))


def verify_history(con: duckdb.DuckDBPyConnection, *, since: datetime | None = None,
                   account: str | None = None, expect_head: str | None = None) -> Verified:
    """Recompute every manifest from the history on ``con`` and check the chain.

    ``since``/``account`` limit which crawls' rows and states are checked (the chain's
    links are always checked whole: they cost nothing). ``expect_head``: a head cited
    earlier (a report, a bundle) that the chain must still hold: the only way to see that
    its latest crawls were cut off. Raises :class:`ChainBrokenError`
    naming the first crawl whose history no longer matches.
    """
    failures: list[_Failure] = []
    manifests = _load_manifests(con, failures)
    crawls = _crawls(con)
    _check_links(manifests, crawls, failures)
    through = -1
    has_genesis = bool(manifests) and manifests[0].seq == 0 and manifests[0].crawl_id is None
    skews = _skews(con)
    if has_genesis:
        through = _check_genesis(con, manifests[0], crawls, skews, failures)
    sealed: dict[int, _Manifest] = {}
    for m in manifests:
        if m.crawl_id is None:
            continue
        if m.crawl_id in sealed:
            failures.append((m.crawl_id, "it has two manifests"))
        sealed[m.crawl_id] = m
    checked: set[int] = set()
    for crawl_id, row in crawls.items():
        if crawl_id <= through:
            continue
        found = sealed.get(crawl_id)
        if found is None:
            failures.append((crawl_id, "it is not in the chain (a crawl row was inserted, or "
                                       "its manifest removed)"))
            continue
        if _as_committed(row, skews, failures) != found.body.get("crawl"):
            failures.append((crawl_id, "its crawl row was edited"))
        made = [{k: v for k, v in s.items() if k != "detected_by_crawl"}
                for s in skews if s["detected_by_crawl"] == crawl_id]
        if made != found.body.get("corrections", []):
            failures.append((crawl_id, "the clock corrections it made (clock_skews) were "
                                       "edited, removed or inserted"))
        in_scope = ((account is None or row["account"] == account)
                    and (since is None or row["finished_at"] >= since))
        if in_scope:
            checked.add(crawl_id)
            if row["status"] != "succeeded" and "state" in found.body:
                failures.append((crawl_id, "its crawl row was edited (status)"))
    for crawl_id in sealed:
        if crawl_id not in crawls:
            failures.append((crawl_id, "it was removed from crawls (its manifest remains)"))
    for kind in KINDS:
        for view in KIND_VIEWS[kind]:
            _sweep(con, view, kind, crawls, sealed, checked, account, failures)
    if expect_head is not None and expect_head not in {m.hash for m in manifests}:
        failures.append((1 << 62, f"the chain holds no manifest {expect_head}: the crawls "
                                  "sealed after it was cited were removed or rewritten"))
    if failures:
        crawl_id, what = min(failures, key=lambda f: f[0])
        named = ("the genesis" if crawl_id < 0 else "its end" if crawl_id == 1 << 62
                 else f"crawl {crawl_id}")
        more = len({f[0] for f in failures}) - 1
        tail = f" ({more} later crawl{'s' if more != 1 else ''} also differ)" if more else ""
        raise ChainBrokenError(None if crawl_id < 0 or crawl_id == 1 << 62 else crawl_id,
                               f"history does not match the evidence chain at {named}: "
                               f"{what}{tail}")
    return Verified(len(checked), manifests[-1].hash if manifests else None, has_genesis)
