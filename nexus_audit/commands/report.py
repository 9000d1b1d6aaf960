"""``nexus-audit report``: an audit report over a window of history, on standard output.

Thin wiring: window and thresholds from the arguments and settings, the price list, the
store (read-only: ``report`` never creates or writes the database), ``build_report``,
one renderer. An unknown account is a usage error (exit 2); an empty database or a
window without crawls a runtime one (exit 1): both a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from nexus_audit.audit.report import build_report
from nexus_audit.audit.rows import collector_paused
from nexus_audit.config import Settings
from nexus_audit.domain import escape
from nexus_audit.domain.policy import load_configured
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import FLAG_NAMES, Clock, SystemClock, Window, parse_duration
from nexus_audit.domain.values import utf8
from nexus_audit.errors import UnknownAccountError, UsageError
from nexus_audit.history.duckfile import process_files
from nexus_audit.history.protocol import History
from nexus_audit.history.store import Store
from nexus_audit.output.render import render_chunks, require_policy

if TYPE_CHECKING:
    from nexus_audit.output.archive import UploadRequest


def report_command(args: argparse.Namespace, settings: Settings, *,
                   clock: Clock | None = None, out: TextIO | None = None) -> int:
    """Build and print the report; raises our errors for the CLI to turn into one line."""
    # The collector stays off from the first row read until the report is gone: its
    # hundreds of thousands of objects hold no cycle, and turned back on while they lived,
    # its next pass walked them all (0.15 s at a million instances). Freed by their
    # counts when the command returns, they are never walked.
    with collector_paused():
        return _report_command(args, settings, clock=clock, out=out)


def _report_command(args: argparse.Namespace, settings: Settings, *,
                    clock: Clock | None, out: TextIO | None) -> int:
    clock = clock or SystemClock()
    now = clock.now()
    window = Window.parse(args.since, args.until, now, names=FLAG_NAMES)
    upload = _upload_request(args)  # flags checked before any work
    bundle = _bundle_target(args)
    if getattr(args, "sign_key", None) and bundle is None:
        raise UsageError("--sign-key signs an evidence bundle: give --bundle FILE.tar.gz too",
                         parameter="sign-key")
    if bundle is not None and len(getattr(args, "from_export", None) or ()) > 1:
        # Each shard's database has its own chain: one bundle cites one chain.
        raise UsageError("--bundle: give one --from-export (each shard has its own evidence "
                         "chain; bundle each shard's report apart)", parameter="bundle")
    key = None
    if getattr(args, "sign_key", None):
        from nexus_audit.output.bundle import SigningKey

        key = SigningKey.load(Path(args.sign_key))
    stale_after = (parse_duration(args.stale_after, parameter="--stale-after")
                   if args.stale_after else settings.stale_after)
    gap_instances, gap_buckets = settings.max_gaps()
    pricing = load_pricing(settings.pricing_file)
    policy = load_configured(settings.policy_file)
    require_policy(args.format, policy)
    # The database, or a set of Parquet exports (one per shard): the same report either way.
    history: History
    if getattr(args, "from_export", None):
        from nexus_audit.history.exports import ParquetHistory

        history = ParquetHistory(*(utf8(d, "--from-export", UsageError)
                                   for d in args.from_export))
    else:
        history = Store(settings.db_path, files=process_files())
    try:
        report = build_report(
            history, window, accounts=[args.account] if args.account else None,
            stale_after=stale_after, pending_stale_after=settings.pending_stale_after,
            max_gap_instances=gap_instances, max_gap_buckets=gap_buckets,
            pricing=pricing, now=now, policy=policy, series=args.format == "html")
    except UnknownAccountError as exc:
        raise UsageError(str(exc), parameter="account") from None
    sink = out or sys.stdout
    # On a terminal, the terminal is the reader: a CSV cell's ESC is escaped there too
    # (the uploaded copy and a redirected file keep the format's own bytes).
    tty = sink.isatty()
    written: list[str] = []
    for chunk in render_chunks(report, args.format):
        sink.write(escape.terminal(chunk, keep_newlines=True) if tty else chunk)
        if upload is not None or bundle is not None:
            written.append(chunk)
    if bundle is None:
        if upload is not None:
            upload.run(settings, "".join(written).encode("utf-8"), report, clock=clock)
        return 0
    from nexus_audit.output.report_bundle import write_report_bundle

    data = write_report_bundle(bundle, history, report, {args.format: "".join(written)},
                               settings=settings, key=key)
    if key is not None:
        sys.stderr.write(f"nexus-audit: bundle {bundle} signed; public key "
                         f"{key.public_id()}\n")
    if upload is not None:
        upload.run(settings, data, report, clock=clock)
    return 0


#: What every gzip file (an earlier bundle) begins with.
_GZIP_MAGIC = b"\x1f\x8b"


def _bundle_target(args: argparse.Namespace) -> Path | None:
    """``--bundle``'s file, checked before the report is printed: a bundle that cannot be
    written is a mistake in the flags, not something to find out after the work.

    The bundle is renamed into place, replacing what the path names: only an earlier
    bundle (a gzip file) may be replaced. ``--bundle "$NEXUS_AUDIT_DB"`` replaced the
    history database with the bundle and exited 0; a device (``/dev/null``, as root) or
    a key, price or config file named by mistake went the same way.
    """
    if not getattr(args, "bundle", None):
        return None
    bundle = Path(args.bundle)
    if not bundle.absolute().parent.is_dir():
        raise UsageError(f"--bundle: no directory {bundle.absolute().parent} to write "
                         f"{bundle.name} in", parameter="bundle")
    if bundle.is_dir():
        raise UsageError(f"--bundle: {bundle} is a directory; name the file to write "
                         "(e.g. DIR/evidence.tar.gz)", parameter="bundle")
    if bundle.exists() or bundle.is_symlink():
        earlier = False
        if bundle.is_file():  # a FIFO is never opened: that would wait for a writer
            try:
                with bundle.open("rb") as existing:
                    earlier = existing.read(2) == _GZIP_MAGIC
            except OSError:
                pass
        if not earlier:
            raise UsageError(f"--bundle: {bundle} exists and is not an earlier bundle; it "
                             "would be replaced (name a new file)", parameter="bundle")
    return bundle


def _upload_request(args: argparse.Namespace) -> UploadRequest | None:
    """``--upload``'s request (its flags checked), or None without ``--upload``.

    The upload path (aiohttp, the API client) is imported only when asked for: a plain
    report does not pay the fifth of a second its imports take. ``--retention`` is
    checked either way, as :meth:`UploadRequest.from_args` does (a bad flag is an error
    wherever it stands).
    """
    if not getattr(args, "upload", None):
        if getattr(args, "retention", None):
            parse_duration(args.retention, parameter="--retention")
        return None
    from nexus_audit.output.archive import UploadRequest

    return UploadRequest.from_args(args)
