"""DuckDB's optimizer switched off, on a commit's cursor only, for the statements of a
diff commit (:mod:`nexus_audit.history.store`), and back on before anything it helps."""

from __future__ import annotations

from typing import Any, Final

import duckdb

from nexus_audit.history import duckfile

#: The memo key of whether DuckDB's optimizer is off on the commit's cursor (absent: on,
#: as on every fresh cursor).
PLAIN: Final = "optimizer_off"


def plain(commit: duckfile.Commit) -> None:
    """DuckDB's optimizer off on the commit's cursor, for the statements of a diff commit.

    Appends from column lists and the crawl's row leave it nothing to improve, yet it spent
    0.1 to 0.3 ms on each (a tenth of a commit in a burst; measured on DuckDB 2.0). It stays
    off for the next commit of the burst (switching costs a statement), and
    :func:`optimized` turns it back on before any statement it helps (reads of the views,
    the set-based comparison, compaction). Only this cursor's: reads meanwhile, even
    through this process's hold on the file, run on cursors of their own.
    """
    if not commit.memo.get(PLAIN):
        commit.cursor.execute("PRAGMA disable_optimizer")
        commit.memo[PLAIN] = True


def optimized(cursor: duckdb.DuckDBPyConnection, memo: dict[Any, Any]) -> None:
    """DuckDB's optimizer back on on a commit's ``cursor`` (``memo``: the commit's) if
    :func:`plain` turned it off: call before any statement that joins, aggregates or
    reads the views (without it they give the same rows, far slower)."""
    if memo.get(PLAIN):
        cursor.execute("PRAGMA enable_optimizer")
        memo[PLAIN] = False
