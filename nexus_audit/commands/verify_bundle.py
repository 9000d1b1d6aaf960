"""``nexus-audit verify-bundle FILE [--public-key K]``: check an evidence bundle offline.

Thin wiring: :func:`~nexus_audit.output.bundle.check_bundle` (no database, no network),
one line on standard output. A bundle that does not check out is a runtime failure (exit 1)
naming the file at fault; an unreadable or malformed ``--public-key`` a usage one (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from nexus_audit.config import Settings
from nexus_audit.output.bundle import check_bundle, load_public_key


def verify_bundle_command(args: argparse.Namespace, settings: Settings, *,
                          out: TextIO | None = None) -> int:
    """Check the bundle; raises our errors for the CLI to turn into one line."""
    key = load_public_key(Path(args.public_key)) if args.public_key else None
    result = check_bundle(Path(args.bundle), public_key=key)
    signed = f"signed by {result.signed_by}" if result.signed_by else "not signed"
    head = result.chain_head or "none"
    (out or sys.stdout).write(
        f"bundle verified: {result.files} files, {signed}; {result.manifests} manifests, "
        f"chain head {head}\n")
    return 0
