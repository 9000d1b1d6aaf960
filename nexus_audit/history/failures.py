"""DuckDB's errors, translated into ours in one place (as httpx maps httpcore's).

Everything in :mod:`nexus_audit.history` that runs SQL does it inside
:func:`translated`, so callers above only ever see :class:`~nexus_audit.errors.StoreError`
(or the error class given), with DuckDB's error kept as the cause.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import duckdb

from nexus_audit.errors import CostOutOfRangeError, NexusAuditError, StoreError


@contextlib.contextmanager
def translated(message: Callable[[duckdb.Error], str],
               error: type[NexusAuditError] = StoreError) -> Iterator[None]:
    """Raise ``error(message(exc))`` from any ``duckdb.Error`` raised inside."""
    try:
        yield
    except duckdb.Error as exc:
        raise error(message(exc)) from exc


@contextlib.contextmanager
def money_in_range() -> Iterator[None]:
    """Raise :class:`~nexus_audit.errors.CostOutOfRangeError` from a cast or sum of money
    that passes DECIMAL(38,12) inside (the queries add amounts exactly, as decimals);
    left to :func:`translated`, it read as a damaged database (``cannot read ...:
    Conversion Error: Could not cast value 57442291666...``)."""
    try:
        yield
    except (duckdb.ConversionException, duckdb.OutOfRangeException) as exc:
        raise CostOutOfRangeError(
            "cost: an amount reaches 10^26 or more, past the 38 digits (12 of them "
            "decimals) a report adds money in: the prices are out of proportion to the "
            "fleet") from exc
