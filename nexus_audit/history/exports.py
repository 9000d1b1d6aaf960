"""Reading exports: one or more Parquet export directories read like the store.

An export directory (see :mod:`nexus_audit.history.parquet`) holds the store's tables as
hive-partitioned Parquet and a marker (:data:`MARKER`) naming the schema version it was
written with. :class:`ParquetHistory` gives a connection on which the store's table names
resolve, so :func:`~nexus_audit.audit.report.build_report` runs on it unchanged.

**Several exports at once** (accounts sharded across ``serve`` replicas, each with its own
database, each exporting to its own directory): the tables are the union of the exports'.
Crawl ids are each database's own sequence, so they repeat across exports; each export's
ids are moved into a range of their own (:data:`ID_SPAN` apart), which keeps every id's
order within its account, the only order the queries use. The report over the set is then
the report one database holding every account would give. Exports must not share an
account (each account lives in one shard) and must come from one schema version.
"""

# S608: only our own identifiers and escaped paths are formatted into SQL; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import duckdb

from nexus_audit.domain import exposure
from nexus_audit.errors import NoDataError, StoreError, UsageError
from nexus_audit.history.failures import translated
from nexus_audit.history.schema import MIGRATIONS, SCHEMA_VERSION

#: The store's tables, in export order.
TABLES: Final = ("crawls", "instance_versions", "bucket_versions", "bucket_sizes")
#: The file naming an export's schema version (absent in exports of schema 3, the first).
MARKER: Final = "nexus-audit-export.json"
_UNMARKED_SCHEMA: Final = 3
#: Crawl ids of the k-th export of a set are moved up by k * ID_SPAN (2^40: a trillion
#: crawls per database, far beyond any history).
ID_SPAN: Final = 1 << 40
#: The columns holding crawl ids, per table.
_ID_COLUMNS: Final = {"crawls": ("crawl_id",), "instance_versions": ("first_crawl", "until_crawl"),
                      "bucket_versions": ("first_crawl", "until_crawl"),
                      "bucket_sizes": ("first_crawl", "until_crawl")}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def parquet_glob(directory: Path, table: str) -> str:
    """The ``read_parquet`` call over one exported table (the form README shows)."""
    pattern = str(directory / table / "**" / "*.parquet")
    return (f"read_parquet({_literal(pattern)}, hive_partitioning = true, "
            "hive_types = {'account': VARCHAR, 'date': DATE})")


def write_marker(directory: Path, scratch: Path) -> None:
    """Write (atomically, through ``scratch`` on the same file system) the marker naming
    this version's schema into the export ``directory``."""
    temp = scratch / MARKER
    temp.write_text(json.dumps({"schema_version": SCHEMA_VERSION}) + "\n", encoding="utf-8")
    os.replace(temp, directory / MARKER)


def schema_of(directory: Path) -> int:
    """The schema version an export was written with (:class:`StoreError` if unreadable)."""
    marker = directory / MARKER
    if not marker.exists():
        return _UNMARKED_SCHEMA
    try:
        version = json.loads(marker.read_text(encoding="utf-8"))["schema_version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{marker} is not a nexus-audit export marker ({exc})") from None
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreError(f"{marker}: schema_version must be a whole number")
    return version


class ParquetHistory:
    """One or more export directories read like the store: views named like its tables.

    ``read()`` gives a connection where ``crawls``, ``instance_versions``,
    ``bucket_versions``, ``bucket_sizes`` and ``kind_crawls`` are views over the Parquet
    files, with the store's column names and types. With several directories, see the
    module docstring.
    """

    def __init__(self, *directories: str | Path) -> None:
        if not directories:
            raise ValueError("ParquetHistory needs at least one export directory")
        self.paths = tuple(Path(d).expanduser().absolute() for d in directories)
        if len(set(self.paths)) != len(self.paths):
            raise UsageError("the same export directory is given twice", parameter="from")

    @property
    def path(self) -> Path:
        """The (first) export directory, for messages."""
        return self.paths[0]

    def __repr__(self) -> str:
        return f"ParquetHistory({', '.join(repr(str(p)) for p in self.paths)})"

    def _check(self) -> None:
        for path in self.paths:
            if not path.is_dir():
                raise NoDataError(f"{path} holds no exported crawls (the directory does not exist)")
            if not any((path / "crawls").glob("*/*/*.parquet")):
                raise NoDataError(f"{path} holds no exported crawls")
        versions = {path: schema_of(path) for path in self.paths}
        for path, version in versions.items():
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was exported with schema version {version}, newer "
                                 f"than this nexus-audit understands ({SCHEMA_VERSION})")
        if len(set(versions.values())) > 1:
            listed = ", ".join(f"{p} (schema {v})" for p, v in versions.items())
            raise UsageError(f"the exports mix schema versions: {listed}; export them again "
                             "with one nexus-audit version", parameter="from")

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A fresh in-memory connection with the views and the ``is_exposed(access)`` macro
        (:class:`NoDataError` if empty)."""
        self._check()
        con = duckdb.connect(":memory:")
        try:
            with translated(lambda exc: f"cannot read the export in "
                                        f"{', '.join(map(str, self.paths))}: {exc}"):
                con.execute("SET TimeZone = 'UTC'")
                # The store's own DDL gives every table its columns and types (and
                # kind_crawls); each exported one is then replaced by a view over its files.
                for _version, statements in MIGRATIONS:
                    for statement in statements:
                        con.execute(statement)
                for table in TABLES:
                    self._view(con, table)
                self._refuse_shared_accounts(con)
                exposure.install(con)
                yield con
        finally:
            con.close()

    def _view(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        """Replace ``table`` by a view over every export's files of it (if any has some)."""
        parts = [(k, p) for k, p in enumerate(self.paths)
                 if any((p / table).glob("*/*/*.parquet"))]
        if not parts:
            return  # nothing exported: the empty table stands
        columns = con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() "
            "WHERE table_name = $t ORDER BY column_index", {"t": table}).fetchall()

        def select(k: int, path: Path) -> str:
            # A column the files lack (an export written before it existed, such as the
            # evidence chain's manifest columns of crawls) reads as NULL.
            present = {r[0] for r in con.execute(
                f"DESCRIBE SELECT * FROM {parquet_glob(path, table)}").fetchall()}
            cols = []
            for name, kind in columns:
                value = f'CAST({chr(34) + name + chr(34) if name in present else "NULL"} AS {kind})'
                if k and name in _ID_COLUMNS[table]:
                    value = f"{value} + {k * ID_SPAN}"
                cols.append(f'{value} AS "{name}"')
            return f"SELECT {', '.join(cols)} FROM {parquet_glob(path, table)}"

        # The version tables are views over the store's logs (schema 3).
        is_view = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = $t",
                              {"t": table}).fetchone()
        con.execute(f"DROP {'VIEW' if is_view and is_view[0] else 'TABLE'} {table}")
        con.execute(f"CREATE VIEW {table} AS "
                    + " UNION ALL ".join(select(k, p) for k, p in parts))

    def _refuse_shared_accounts(self, con: duckdb.DuckDBPyConnection) -> None:
        if len(self.paths) < 2:
            return
        rows = con.execute(
            " UNION ALL ".join(f"SELECT DISTINCT account, {k} AS k FROM "
                               f"{parquet_glob(p, 'crawls')}"
                               for k, p in enumerate(self.paths))).fetchall()
        where: dict[str, list[int]] = {}
        for account, k in rows:
            where.setdefault(account, []).append(int(k))
        shared = {a: ks for a, ks in sorted(where.items()) if len(ks) > 1}
        if shared:
            account, ks = next(iter(shared.items()))
            raise UsageError(
                f"the exports overlap: account {account!r} is in "
                f"{' and '.join(str(self.paths[k]) for k in ks)}; each account belongs to "
                "one shard's export", parameter="from")

