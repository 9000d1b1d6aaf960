"""DuckDB's errors, translated into ours in one place (as httpx maps httpcore's).

Everything in :mod:`nexus_audit.history` that runs SQL does it inside
:func:`translated`, so callers above only ever see :class:`~nexus_audit.errors.StoreError`
(or the error class given), with DuckDB's error kept as the cause.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import duckdb

from nexus_audit.errors import NexusAuditError, StoreError


@contextlib.contextmanager
def translated(message: Callable[[duckdb.Error], str],
               error: type[NexusAuditError] = StoreError) -> Iterator[None]:
    """Raise ``error(message(exc))`` from any ``duckdb.Error`` raised inside."""
    try:
        yield
    except duckdb.Error as exc:
        raise error(message(exc)) from exc
