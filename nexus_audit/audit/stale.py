"""Stale instances: the rule, and the streaks ``serve`` counts between instance crawls.

An instance is stale when it has not been ``running`` continuously for at least
``stale_after`` up to a moment (``pending``: for at least ``pending_stale_after``, counting
only the pending run). ``queries/stale_instances.sql`` applies the rule over history for
the report; :func:`is_stale` is the same rule over one streak's start, for ``/metrics``,
which recounts the streaks of the last instance crawl (counted by their start) at each
snapshot's time instead of querying again (tests/test_stale.py checks both agree on the
same history).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from nexus_audit.audit.report import from_epoch_us, prepare, query_values
from nexus_audit.domain.pricing import Pricing
from nexus_audit.domain.timeutil import Window
from nexus_audit.errors import NoDataError
from nexus_audit.history.protocol import History
from nexus_audit.history.readers import resolve_accounts
from nexus_audit.history.sql import bind, create_temp, load_query

#: A threshold every streak passes: the query then lists every current instance not
#: running, with the start of its streak.
_ANY: Final = timedelta(microseconds=1)


def threshold(status: str, *, stale_after: timedelta,
              pending_stale_after: timedelta) -> timedelta:
    """How long an instance of ``status`` must sit before it counts as stale."""
    return pending_stale_after if status == "pending" else stale_after


def is_stale(status: str, since: datetime, at: datetime, *, stale_after: timedelta,
             pending_stale_after: timedelta) -> bool:
    """Whether a streak of ``status`` that began at ``since`` is stale at ``at``.

    The query's arithmetic: whole microseconds over 1e6, compared in seconds.
    """
    if status == "running":
        return False
    limit = threshold(status, stale_after=stale_after, pending_stale_after=pending_stale_after)
    return (at - since).total_seconds() >= limit.total_seconds()


@dataclass(frozen=True, slots=True)
class StreakCount:
    """Current instances of one account and status not running since one moment, counted
    (a streak's start is the crawl that first saw it: a fleet's streaks share a few
    hundred starts, so a million instances come as a few hundred counts)."""

    account: str
    status: str
    since: datetime
    number: int


def current_streak_counts(history: History, accounts: Sequence[str], *, until: datetime,
                          since: datetime, max_gap_instances: timedelta,
                          max_gap_buckets: timedelta, pricing: Pricing) -> list[StreakCount]:
    """Every instance not running as of the last instance crawl before ``until``, counted
    by account, status and the start of its streak; ``since`` only has to lie before that
    crawl (history before the window is read anyway). Only the tables the stale query
    needs are built, and of the state only the instances not running (the only ones it
    reads: a sixth of a fleet)."""
    values = query_values(Window(since, until), stale_after=_ANY, pending_stale_after=_ANY,
                          max_gap_instances=max_gap_instances,
                          max_gap_buckets=max_gap_buckets, pricing=pricing)
    sql = load_query("stale_instances")
    try:
        with history.read() as con:
            values["accounts"] = resolve_accounts(con, accounts)
            prepare(con, values, pricing, ("obs", "instance_prices"))
            create_temp(con, "state_instances", "state_instances", values,
                        where="status <> 'running'")
            rows = con.execute(
                f"""SELECT account, status, epoch_us(stale_since), count(*)
                    FROM ({sql}) GROUP BY ALL ORDER BY ALL""",  # noqa: S608 - our query
                bind(sql, values)).fetchall()
    except NoDataError:
        return []
    return [StreakCount(account=a, status=status, since=from_epoch_us(micros), number=int(n))
            for a, status, micros, n in rows]
