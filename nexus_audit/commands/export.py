"""``nexus-audit export``: the history of a window as hive-partitioned Parquet, atomically.

Thin wiring: the window from ``--since``/``--until``, the store (read-only), the target
directory (``--to``, default ``./nexus-audit-export``), :func:`export_history`, and one
summary line per table on standard output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final, TextIO

from nexus_audit.config import Settings
from nexus_audit.domain import escape
from nexus_audit.domain.timeutil import FLAG_NAMES, Clock, SystemClock, Window
from nexus_audit.domain.values import utf8
from nexus_audit.errors import UnknownAccountError, UsageError
from nexus_audit.history.duckfile import process_files
from nexus_audit.history.parquet import TABLES, export_history
from nexus_audit.history.store import Store

DEFAULT_EXPORT_DIR: Final = "nexus-audit-export"


def export_command(args: argparse.Namespace, settings: Settings, *,
                   clock: Clock | None = None, out: TextIO | None = None) -> int:
    """Export the window; raises our errors for the CLI to turn into one line."""
    window = Window.parse(args.since, args.until, (clock or SystemClock()).now(),
                          names=FLAG_NAMES)
    # DuckDB takes UTF-8 paths only: a --to it cannot write was created, locked and left
    # behind before its COPY failed on the name.
    target = utf8(args.to or DEFAULT_EXPORT_DIR, "--to", UsageError)
    try:
        result = export_history(Store(settings.db_path, files=process_files()),
                                Path(target),
                                window, accounts=[args.account] if args.account else None)
    except UnknownAccountError as exc:
        raise UsageError(str(exc), parameter="account") from None
    stream = out or sys.stdout
    # Account names come from the database (another tool's file, another shard's):
    # escaped for the terminal like every other line.
    stream.write(escape.terminal(f"exported {', '.join(result.accounts)} to "
                                 f"{result.directory}") + "\n")
    for table in TABLES:
        stream.write(f"  {table}: {result.rows.get(table, 0):,} rows in "
                     f"{result.partitions.get(table, 0):,} partitions\n")
    return 0
