"""What audit code reads history through: a protocol, so the audit layer depends on no
concrete store (the DuckDB :class:`~nexus_audit.history.store.Store` and the Parquet
export's :class:`~nexus_audit.history.parquet.ParquetHistory` both satisfy it).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import duckdb


class History(Protocol):
    """Where :func:`build_report` reads: the :class:`~nexus_audit.history.store.Store`, or an
    export's Parquet files (:class:`nexus_audit.history.parquet.ParquetHistory`)."""

    @property
    def path(self) -> Path:
        """The database file or export directory, for error messages."""

    def read(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A read-only connection on which the store's table names resolve."""
