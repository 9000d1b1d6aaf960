"""The ``nexus-audit`` command: parse, load config, wire objects, run.

No business logic lives here. Errors become one line on standard error and an exit code:
2 for a usage or configuration mistake, 1 for a runtime failure, 130 for Ctrl-C.
Tracebacks are for bugs only. The line is escaped for the terminal
(:func:`nexus_audit.domain.escape.terminal`): an API error body quoted in it cannot move the
cursor, retitle the window or start a second line.

Ctrl-C at any moment is "interrupted" and 130, never a traceback: this module imports only
the standard library at its top (the console script imports it before :func:`run` can
catch anything), the start-up (imports of the command, its parser, the configuration)
runs with SIGINT held back and takes it once done, and a DuckDB query that Ctrl-C
interrupted (DuckDB turns the KeyboardInterrupt into ``RuntimeError('Query interrupted')``)
counts as the interrupt it was.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, NoReturn

from nexus_audit import __version__

if TYPE_CHECKING:
    from nexus_audit.config import Settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
SHARD_HELP = ("crawl only the accounts of replica I of N (stable by account name; "
              "default: NEXUS_AUDIT_SHARD, else every account)")

Handler = Callable[[argparse.Namespace, "Settings"], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in our one-line style (still exit 2)."""

    def error(self, message: str) -> NoReturn:
        from nexus_audit.domain import escape

        self.exit(EXIT_USAGE, f"nexus-audit: error: {escape.terminal(message)} "
                              f"(see {self.prog} --help)\n")


def _account_name(value: str) -> str:
    """``--account``: a name; an empty one (``--account "$UNSET"``) is refused rather than
    read as every account."""
    if not value.strip():
        raise argparse.ArgumentTypeError(
            "give an account name (without --account, every account is meant)")
    return value


def _chain_head(value: str) -> str:
    """``--expect-head``: a chain head as reports cite it (64 hex digits; any case, spaces
    around forgiven). A typo is a usage error, not "the crawls were removed or rewritten"."""
    head = value.strip().lower()
    if len(head) != 64 or any(ch not in "0123456789abcdef" for ch in head):
        raise argparse.ArgumentTypeError(
            "expected a chain head, 64 hexadecimal digits (a report's evidence.chain_head)")
    return head


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from nexus_audit.simulator.cli import run

    return run(args)


def _cmd_crawl(args: argparse.Namespace, settings: Settings) -> int:
    from nexus_audit.commands.crawl import crawl_command

    return crawl_command(args, settings)


def _cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from nexus_audit.commands.report import report_command

    return report_command(args, settings)


def _cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from nexus_audit.commands.export import export_command

    return export_command(args, settings)


def _cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from nexus_audit.commands.verify import verify_command

    return verify_command(args, settings)


def _cmd_verify_bundle(args: argparse.Namespace, settings: Settings) -> int:
    from nexus_audit.commands.verify_bundle import verify_bundle_command

    return verify_bundle_command(args, settings)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from nexus_audit.commands.serve import serve_command

    return serve_command(args, settings)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from nexus_audit.commands.demo import demo_command

    return demo_command(args, settings)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (the contract in DESIGN.md)."""
    from nexus_audit.simulator.cli import add_arguments as add_simulator_arguments

    parser = _Parser(
        prog="nexus-audit",
        description="Inventory exporter and audit service for CloudNexus (REST API v2).",
        epilog="Configuration comes from the environment (NEXUS_API_KEY or NEXUS_API_KEY_FILE, "
        "NEXUS_API_URL, NEXUS_AUDIT_DB, NEXUS_RATE_BUDGET) and the TOML file named by "
        "NEXUS_AUDIT_CONFIG; the environment wins. Keys are never taken on the command line.",
    )
    parser.add_argument("--version", action="version", version=f"nexus-audit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    crawl = sub.add_parser("crawl", help="crawl every configured account once, now")
    crawl.add_argument("--account", metavar="NAME", type=_account_name,
                       help="crawl only this account")
    crawl.add_argument("--kinds", default="instances,buckets",
                       help="resource kinds to crawl, comma-separated (default: both)")
    crawl.add_argument("--shard", metavar="I/N", help=SHARD_HELP)
    crawl.set_defaults(handler=_cmd_crawl)

    report = sub.add_parser("report", help="audit report over a window of history")
    report.add_argument("--since", default="30d",
                        help="window start: a duration back from now or an ISO 8601 time "
                        "(default 30d)")
    report.add_argument("--until", help="window end: a duration back or an ISO time (default now)")
    report.add_argument("--format", default="table",
                        choices=["table", "json", "markdown", "csv", "ocsf", "html"],
                        help="output format (default: table); ocsf: the policy findings as "
                             "OCSF Compliance Finding events, JSON lines; html: one "
                             "self-contained page with charts")
    report.add_argument("--account", metavar="NAME", type=_account_name,
                        help="only this account")
    report.add_argument("--from-export", metavar="DIR", action="append", dest="from_export",
                        help="read these Parquet exports (repeat for each shard's) instead "
                        "of the database")
    report.add_argument("--stale-after", default=None, metavar="DURATION",
                        help="how long an instance must sit not running to be stale (default 7d)")
    report.add_argument("--upload", metavar="BUCKET/KEY",
                        help="also upload the rendered report to CloudNexus object storage, "
                        "verified (refused for a bucket the latest crawl saw exposed)")
    report.add_argument("--retention", default="400d", metavar="DURATION",
                        help="retention recorded in the uploaded object's metadata "
                        "(default 400d)")
    report.add_argument("--bundle", metavar="FILE.tar.gz",
                        help="also write an evidence bundle: the report (this format and "
                        "JSON), the manifests of its crawls, the pricing and policy files, "
                        "SHA256SUMS and VERIFY.md")
    report.add_argument("--sign-key", metavar="FILE",
                        help="sign the bundle's SHA256SUMS with this Ed25519 private key "
                        "(PEM, unencrypted); read from the file only, never logged")
    report.set_defaults(handler=_cmd_report)

    export = sub.add_parser("export", help="history of a window as hive-partitioned Parquet")
    export.add_argument("--since", default="30d",
                        help="window start: a duration back from now or an ISO 8601 time "
                        "(default 30d)")
    export.add_argument("--until", help="window end: a duration back or an ISO time (default now)")
    export.add_argument("--to", metavar="DIR",
                        help="target directory (default ./nexus-audit-export); partitions "
                        "already there are replaced atomically")
    export.add_argument("--account", metavar="NAME", type=_account_name,
                        help="only this account")
    export.set_defaults(handler=_cmd_export)

    verify = sub.add_parser(
        "verify", help="recompute the evidence chain from the stored history (read-only)")
    verify.add_argument("--since", metavar="T",
                        help="check only crawls that finished since T (a duration back or an "
                        "ISO 8601 time); the chain's links are always checked whole")
    verify.add_argument("--account", metavar="NAME", type=_account_name,
                        help="check only this account's crawls")
    verify.add_argument("--expect-head", metavar="HASH", type=_chain_head,
                        help="a chain head cited earlier (a report's evidence.chain_head) "
                        "that the chain must still hold")
    verify.add_argument("--export", metavar="DIR",
                        help="verify a Parquet export (`nexus-audit export`) instead of the "
                        "database: the crawls since --since, from the exported rows alone")
    verify.set_defaults(handler=_cmd_verify)

    verify_bundle = sub.add_parser(
        "verify-bundle", help="check an evidence bundle offline (no database, no network)")
    verify_bundle.add_argument("bundle", metavar="FILE.tar.gz")
    verify_bundle.add_argument("--public-key", metavar="FILE",
                               help="the Ed25519 public key (PEM) the bundle must be signed "
                               "with; without it, a signature is checked against the key the "
                               "bundle carries")
    verify_bundle.set_defaults(handler=_cmd_verify_bundle)

    serve = sub.add_parser("serve", help="scheduled crawls plus /metrics, /report, /healthz")
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="listen address (default 127.0.0.1:9747, or NEXUS_AUDIT_LISTEN)")
    serve.add_argument("--interval", metavar="DURATION",
                       help="instance crawl interval (default 1h)")
    serve.add_argument("--bucket-interval", metavar="DURATION",
                       help="bucket poll interval (default 1m)")
    serve.add_argument("--shard", metavar="I/N", help=SHARD_HELP)
    serve.set_defaults(handler=_cmd_serve)

    simulate = sub.add_parser("simulate", help="run the CloudNexus v2 simulator")
    add_simulator_arguments(simulate)
    simulate.set_defaults(handler=_cmd_simulate)

    demo = sub.add_parser("demo", help="the whole service against the simulator, with churn")
    demo.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:9747",
                      help="where the service listens (default 127.0.0.1:9747)")
    demo.add_argument("--interval", metavar="DURATION", default="30s",
                      help="crawl interval (default 30s)")
    demo.add_argument("--db", metavar="PATH", default=None,
                      help="database file (default: NEXUS_AUDIT_DB or ./nexus-audit-demo.duckdb)")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _fail(message: str, code: int, hint: str = "") -> int:
    from nexus_audit.domain import escape
    from nexus_audit.logs import redactor

    text = escape.terminal(redactor.scrub(message))
    sys.stderr.write(f"nexus-audit: error: {text}\n")
    if hint:
        sys.stderr.write(f"nexus-audit: hint: {escape.terminal(redactor.scrub(hint))}\n")
    return code


# Commands that open the history: DuckDB is imported during the start-up, SIGINT held back
# (a KeyboardInterrupt inside DuckDB's module initialisation aborts the process, exit 134),
# with the module of the command.
_STORE_COMMANDS: Final = frozenset({"crawl", "report", "export", "verify", "serve", "demo"})
_MODULES: Final = {"simulate": "nexus_audit.simulator.cli",
                   "verify-bundle": "nexus_audit.commands.verify_bundle"}
# What DuckDB raises instead of KeyboardInterrupt when Ctrl-C interrupts a query.
_DUCKDB_INTERRUPTED: Final = ("Query interrupted",)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """SIGINT held back inside (pending, not lost); delivered as KeyboardInterrupt at the end."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _interrupted() -> int:
    sys.stderr.write("nexus-audit: interrupted\n")
    return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nexus-audit`` console script."""
    from nexus_audit.errors import NexusAuditError, UsageError

    try:
        with _sigint_held():
            args = build_parser().parse_args(argv)
            if args.command in _STORE_COMMANDS:
                importlib.import_module("duckdb")
            importlib.import_module(
                _MODULES.get(args.command, f"nexus_audit.commands.{args.command}"))
            from nexus_audit.config import load_settings
            from nexus_audit.logs import configure_logging

            settings = load_settings()
            configure_logging(secrets=settings.secrets())
        handler: Handler = args.handler
        return handler(args, settings)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE, exc.hint)
    except NexusAuditError as exc:
        return _fail(str(exc), EXIT_FAILURE, exc.hint)
    except KeyboardInterrupt:
        return _interrupted()
    except RuntimeError as exc:
        if exc.args == _DUCKDB_INTERRUPTED:
            return _interrupted()
        raise


def run() -> NoReturn:
    """Console-script wrapper: exit with :func:`main`'s code (130 for a Ctrl-C before it)."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = _interrupted()
    sys.exit(code)


if __name__ == "__main__":
    run()
