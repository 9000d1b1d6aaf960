"""``nexus-audit verify``: recompute the evidence chain from the stored history.

Thin wiring: the store (read-only, beside a running ``serve`` like ``report``) or a
Parquet export (``--export DIR --since T``: the crawls of the exported window),
:func:`~nexus_audit.history.verify.verify_history`, one line on standard output. A
mismatch is a runtime failure (exit 1) naming the first crawl that no longer matches.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from nexus_audit.config import Settings
from nexus_audit.domain.timeutil import Clock, SystemClock, parse_time
from nexus_audit.errors import UnknownAccountError, UsageError
from nexus_audit.history.duckfile import process_files
from nexus_audit.history.exports import ParquetHistory
from nexus_audit.history.protocol import History
from nexus_audit.history.readers import resolve_accounts
from nexus_audit.history.store import Store
from nexus_audit.history.verify import verify_history


def verify_command(args: argparse.Namespace, settings: Settings, *,
                   clock: Clock | None = None, out: TextIO | None = None) -> int:
    """Verify the chain; raises our errors for the CLI to turn into one line."""
    now = (clock or SystemClock()).now()
    since = parse_time(args.since, now, parameter="--since") if args.since else None
    export = getattr(args, "export", None)
    if export and since is None:
        # An export holds every row only of the crawls from its window's start on.
        raise UsageError("--export: give --since, the start of the exported window",
                         parameter="since")
    history: History = (ParquetHistory(export) if export
                        else Store(settings.db_path, files=process_files()))
    with history.read() as con:
        if args.account:
            try:
                resolve_accounts(con, [args.account])
            except UnknownAccountError as exc:
                raise UsageError(str(exc), parameter="account") from None
        result = verify_history(con, since=since, account=args.account,
                                expect_head=args.expect_head)
    stream = out or sys.stdout
    head = result.head or "(empty: no crawl committed yet)"
    stream.write(f"{result.crawls} crawl{'s' if result.crawls != 1 else ''} verified, "
                 f"chain head {head}\n")
    return 0
