"""Load the audit questions: one ``.sql`` file per question, shipped in the package.

The files live in the repository's top-level ``queries/`` directory, installed as the
package ``nexus_audit.queries``. Parameters are bound with ``$name``; nothing is ever
formatted into the SQL text.
"""

from __future__ import annotations

import functools
import re
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
