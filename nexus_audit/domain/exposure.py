"""What counts as an exposed bucket: the one rule, for Python and for SQL.

A bucket is private only when its ``access`` is exactly the string ``private``. Anything
else is exposed, failing closed: ``public``, ``public-read``, values never seen before, and
also ``Private``, ``private`` with any whitespace around it (``"private\\n"``),
look-alikes (a Cyrillic ``\u0440`` for the ``p``), zero-width characters, the empty string
and NULL. An API that answers something odd is not given the benefit of the doubt; the
report shows the value as it came.

Every consumer uses this module: the report and findings queries through the DuckDB macro
``is_exposed(access)`` (installed by :func:`install` on each connection the queries run on,
generated from the same constant as the Python predicate), and ``/metrics``, the alert's
series and the ``--upload`` guard through :func:`is_exposed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import duckdb

#: The only access value that is not exposed (compared exactly: no trimming, no case folding).
PRIVATE: Final = "private"

#: The name of the SQL macro the queries call (``is_exposed(v.access)``).
MACRO: Final = "is_exposed"


def is_exposed(access: str | None) -> bool:
    """Whether a bucket with this ``access`` is exposed: anything but exactly ``private``."""
    return access != PRIVATE


def _sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def sql_expression(column: str) -> str:
    """The SQL form of :func:`is_exposed` over ``column``: TRUE for NULL too, never NULL."""
    # IS DISTINCT FROM compares the bytes exactly and treats NULL as a value (so NULL is
    # exposed), where <> would give NULL.
    return f"({column}) IS DISTINCT FROM {_sql_string(PRIVATE)}"


#: The statement that defines the macro on a connection (temporary: per connection).
MACRO_SQL: Final = (f"CREATE OR REPLACE TEMP MACRO {MACRO}(access) AS "
                    f"{sql_expression('access')}")


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Define the ``is_exposed(access)`` macro on ``con`` (every read connection needs it)."""
    con.execute(MACRO_SQL)
