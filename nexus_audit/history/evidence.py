"""What a report cites of the evidence chain: the head as of its window's end and the
manifests of the crawls it used (see :mod:`nexus_audit.history.chain`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb

from nexus_audit.domain.timeutil import Window, isoformat
from nexus_audit.history.exports import ID_SPAN


@dataclass(frozen=True, slots=True)
class CitedCrawl:
    """One crawl a report used, and its manifest's hash (None: before the chain began)."""

    crawl_id: int
    account: str
    finished_at: datetime
    manifest: str | None


@dataclass(frozen=True, slots=True)
class Evidence:
    """The chain as a report cites it."""

    #: The hash of the last manifest sealed before the window's end (None: no chain, or
    #: exports of several databases, each with a chain of its own).
    chain_head: str | None
    #: Its place in the chain.
    head_seq: int | None
    #: The crawls in the window, and per account and kind the last successful one before
    #: it (the state the window starts from), in crawl order.
    crawls: tuple[CitedCrawl, ...]

    def to_json_dict(self) -> dict[str, Any]:
        """``{"chain_head": hash, "crawls": [{crawl_id, account, finished_at, manifest}]}``."""
        return {"chain_head": self.chain_head,
                "crawls": [{"crawl_id": c.crawl_id, "account": c.account,
                            "finished_at": isoformat(c.finished_at), "manifest": c.manifest}
                           for c in self.crawls]}


_CITED = """
    WITH used AS (
        SELECT crawl_id FROM crawls
        WHERE list_contains($accounts, account) AND finished_at >= $since
          AND finished_at < $until
        UNION
        SELECT max(crawl_id) FROM kind_crawls
        WHERE list_contains($accounts, account) AND status = 'succeeded'
          AND finished_at < $since
        GROUP BY account, kind)
    SELECT c.crawl_id, c.account, c.finished_at, m.hash
    FROM crawls c JOIN used u ON u.crawl_id = c.crawl_id
    LEFT JOIN manifests m ON m.crawl_id = c.crawl_id
    ORDER BY c.crawl_id"""
_HEAD = """
    SELECT m.seq, m.hash FROM manifests m LEFT JOIN crawls c ON c.crawl_id = m.crawl_id
    WHERE m.crawl_id IS NULL OR c.finished_at < $until
    ORDER BY m.seq DESC LIMIT 1"""


def read_evidence(con: duckdb.DuckDBPyConnection, accounts: Sequence[str],
                  window: Window) -> Evidence:
    """The chain head as of ``window``'s end and the manifests of the crawls it uses."""
    cited = tuple(
        CitedCrawl(int(i), str(a), f.astimezone(UTC), None if h is None else str(h))
        for i, a, f, h in con.execute(_CITED, {"accounts": list(accounts),
                                               "since": window.since,
                                               "until": window.until}).fetchall())
    head = con.execute(_HEAD, {"until": window.until}).fetchone()
    several = con.execute("SELECT max(crawl_id) >= $span FROM crawls",
                          {"span": ID_SPAN}).fetchone()
    if several and several[0]:
        # A set of exports from several databases (shards): each has a chain of its own,
        # so there is no one head; the manifests cited still stand, one per crawl.
        head = None
    return Evidence(chain_head=str(head[1]) if head else None,
                    head_seq=int(head[0]) if head else None, crawls=cited)


def manifest_range(con: duckdb.DuckDBPyConnection, evidence: Evidence) -> list[dict[str, Any]]:
    """The manifests from the first one a report cites up to its chain head, in chain
    order (``seq``, ``crawl_id``, ``hash``, ``body``): a contiguous stretch, so each one's
    ``prev`` can be checked against the one before without the database."""
    if evidence.head_seq is None:
        return []
    hashes = [c.manifest for c in evidence.crawls if c.manifest is not None]
    first = con.execute("SELECT min(seq) FROM manifests WHERE list_contains($h, hash)",
                        {"h": hashes}).fetchone()
    start = int(first[0]) if first and first[0] is not None else evidence.head_seq
    rows = con.execute("SELECT seq, crawl_id, hash, body FROM manifests "
                       "WHERE seq BETWEEN $a AND $b ORDER BY seq",
                       {"a": start, "b": evidence.head_seq}).fetchall()
    return [{"seq": int(s), "crawl_id": None if c is None else int(c), "hash": str(h),
             "body": str(b)} for s, c, h, b in rows]
