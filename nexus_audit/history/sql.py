"""Load and run the audit questions: one ``.sql`` file per question, shipped in the package.

The files live in the repository's top-level ``queries/`` directory, installed as the
package ``nexus_audit.queries``. Parameters are bound with ``$name``; nothing is ever
formatted into the SQL text. :func:`run_query` reads a query's rows, long lists' times
and texts of few values coded as integers (:func:`from_epoch_us`, :func:`decoded`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from nexus_audit.errors import NexusAuditError

if TYPE_CHECKING:
    import duckdb

_PACKAGE: Final = "nexus_audit.queries"
_NAME: Final = re.compile(r"[a-z][a-z0-9_]*")
_PARAM: Final = re.compile(r"\$([a-z_][a-z0-9_]*)")


@functools.cache
def load_query(name: str) -> str:
    """The SQL text of the query ``name`` (``queries/<name>.sql``)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid query name {name!r}")
    try:
        return resources.files(_PACKAGE).joinpath(f"{name}.sql").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise NexusAuditError(f"query {name!r} is missing from this installation") from exc


def query_names() -> list[str]:
    """The names of every shipped query."""
    return sorted(entry.name.removesuffix(".sql") for entry in
                  resources.files(_PACKAGE).iterdir() if entry.name.endswith(".sql"))


def parameters(sql: str) -> set[str]:
    """The ``$name`` parameters a query binds (comments included; harmless extras)."""
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return set(_PARAM.findall(code))


def bind(sql: str, values: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``values`` the query uses (DuckDB refuses unused named parameters)."""
    wanted = parameters(sql)
    missing = wanted - set(values)
    if missing:
        raise ValueError(f"query needs parameters {sorted(missing)}")
    return {k: v for k, v in values.items() if k in wanted}


def create_temp(con: duckdb.DuckDBPyConnection, table: str, name: str,
                values: dict[str, Any], *, where: str | None = None) -> None:
    """Materialize query ``name`` as the temp table ``table`` on ``con`` (for the queries
    that read it after); ``where``: only its rows that meet this condition (our own SQL)."""
    sql = load_query(name)
    params = bind(sql, values)
    if where is not None:
        sql = f"SELECT * FROM ({sql}) WHERE {where}"  # noqa: S608 - our own condition
    # The table name is ours, never a user's; the query's values are bound.
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {sql}", params)


def run_query(con: duckdb.DuckDBPyConnection, name: str, values: dict[str, Any], *,
              epoch_us: Sequence[str] = (),
              coded: Sequence[tuple[str, Sequence[str]]] = ()) -> list[tuple[Any, ...]]:
    """The rows of query ``name`` with the values it binds; the time columns named in
    ``epoch_us`` come as microseconds since the epoch (:func:`from_epoch_us` makes them
    UTC times), and each text column of ``coded`` (column, the values it can hold) as
    its value's position in :func:`domain` of them (0 for NULL; :func:`decoded` makes
    them text again). A value outside its domain fails the query.

    DuckDB makes each time a Python datetime in its session's zone (about 2 µs), which
    ``astimezone(UTC)`` then copies (as long again), while a long list's rows share the
    few times of their crawls (300,000 drift rows of 720 crawls in 30 days of a million
    instances): read as integers, each distinct time is made once. The same goes for a
    column of a few texts (a drift row's kind, change, field and account): read as
    small integers, each text is made once, not once a row.
    """
    sql = load_query(name)
    params = bind(sql, values)
    replaced = [f'epoch_us("{c}") AS "{c}"' for c in epoch_us]
    for number, (column, texts) in enumerate(coded):
        params[f"domain_{number}"] = list(texts)
        # A text the caller did not foresee fails the report rather than read as another.
        replaced.append(
            f'CASE WHEN "{column}" IS NULL THEN 0 ELSE coalesce(list_position('
            f'$domain_{number}, "{column}"), error(\'{name}: unexpected {column} \' '
            f'|| "{column}")) END AS "{column}"')
    if replaced:
        # The query's own order stands (a projection over it keeps the rows in order).
        sql = f"SELECT * REPLACE ({', '.join(replaced)}) FROM ({sql})"  # noqa: S608 - ours
    return con.execute(sql, params).fetchall()


def domain(texts: Sequence[str]) -> tuple[str | None, ...]:
    """What a coded column's integers stand for: None (NULL), then ``texts`` in order."""
    return (None, *texts)


def decoded(codes: Sequence[int], texts: Sequence[str]) -> list[str | None]:
    """A coded column (:func:`run_query`) as its texts, each one object shared by its rows."""
    return list(map(domain(texts).__getitem__, codes))


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=4096)
def from_epoch_us(micros: int) -> datetime:
    """The UTC time ``micros`` microseconds after the epoch (DuckDB's ``epoch_us``)."""
    return _EPOCH + timedelta(microseconds=micros)
