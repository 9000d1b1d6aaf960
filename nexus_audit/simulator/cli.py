"""The ``simulate`` command: flags, then serve until SIGINT/SIGTERM.

Wired into ``nexus-audit simulate`` by the main CLI; also ``python -m nexus_audit.simulator``.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .config import (
    DEFAULT_BUCKETS,
    DEFAULT_CURSOR_MAX_AGE,
    DEFAULT_INSTANCES,
    DEFAULT_PENDING_SECONDS,
    DEFAULT_RATE_LIMIT,
    DEFAULT_RATE_WINDOW,
    DEFAULT_SEED,
    DEFAULT_SLOW_SECONDS,
    SimulatorConfig,
    generate_key,
)

if TYPE_CHECKING:
    from .runner import Simulator

DEFAULT_PORT = 8750
_PROG = "nexus-audit simulate"


def _number(
    kind: Callable[[str], float], *, low: float, high: float | None = None, strict: bool = False
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        too_low = value <= low if strict else value < low
        if too_low or (high is not None and value > high) or value != value:  # NaN
            bound = f"> {low}" if strict else f">= {low}"
            upper = f" and <= {high}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"must be {bound}{upper}, got {text}")
        return value

    return parse


def _int_arg(*, low: int, high: int | None = None) -> Callable[[str], int]:
    check = _number(int, low=low, high=high)

    def parse(text: str) -> int:
        return int(check(text))

    return parse


_PROBABILITY = _number(float, low=0.0, high=1.0)
_SECONDS = _number(float, low=0.0)
_POSITIVE_SECONDS = _number(float, low=0.0, strict=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to ``parser``."""
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    net.add_argument(
        "--port",
        type=_int_arg(low=0, high=65535),
        default=DEFAULT_PORT,
        help="port to bind, 0 for a free one (default %(default)s)",
    )
    keys = net.add_mutually_exclusive_group()
    keys.add_argument("--key", help="API key to accept (default: a random nx_test_sk_...)")
    keys.add_argument(
        "--key-file", type=Path, help="read the API key from this file (a line per account)"
    )
    net.add_argument(
        "--accounts",
        type=_int_arg(low=1),
        default=1,
        help="accounts, each with a fleet and a key of its own (random keys, printed one "
        "per line after the URL, unless --key-file names them); default %(default)s",
    )

    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--instances", type=_int_arg(low=0), default=DEFAULT_INSTANCES)
    fleet.add_argument("--buckets", type=_int_arg(low=0), default=DEFAULT_BUCKETS)
    fleet.add_argument("--seed", type=int, default=DEFAULT_SEED, help="same seed, same fleet")
    fleet.add_argument(
        "--churn-interval",
        type=_SECONDS,
        default=0.0,
        help="run one churn step every SECONDS (0 = off)",
    )
    fleet.add_argument(
        "--bucket-page-size",
        type=_int_arg(low=0),
        default=0,
        help="page GET /buckets with this default page size (0 = one unpaged response)",
    )
    fleet.add_argument(
        "--pending-seconds",
        type=_SECONDS,
        default=DEFAULT_PENDING_SECONDS,
        help="how long a created instance stays pending",
    )

    behaviour = parser.add_argument_group("behaviour and faults")
    behaviour.add_argument("--latency", type=_SECONDS, default=0.0, help="seconds per request")
    behaviour.add_argument("--latency-jitter", type=_SECONDS, default=0.0)
    behaviour.add_argument(
        "--rate-limit", type=_int_arg(low=1), default=DEFAULT_RATE_LIMIT, help="requests per window"
    )
    behaviour.add_argument(
        "--rate-window", type=_POSITIVE_SECONDS, default=DEFAULT_RATE_WINDOW, help="seconds"
    )
    behaviour.add_argument(
        "--cursor-max-age", type=_POSITIVE_SECONDS, default=DEFAULT_CURSOR_MAX_AGE
    )
    for name, what in (
        ("500", "answer 500"),
        ("429", "answer a spurious 429"),
        ("reset", "reset the connection"),
        ("slow", "answer after --slow-seconds"),
        ("malformed", "send truncated or invalid JSON"),
    ):
        behaviour.add_argument(
            f"--fault-{name}",
            type=_PROBABILITY,
            default=0.0,
            metavar="P",
            help=f"probability per request to {what}",
        )
    behaviour.add_argument("--slow-seconds", type=_SECONDS, default=DEFAULT_SLOW_SECONDS)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build the SimulatorConfig the flags describe (reads ``--key-file``)."""
    accounts = getattr(args, "accounts", 1)
    if args.key_file is not None:
        keys = tuple(k.strip() for k in args.key_file.read_text(encoding="utf-8").splitlines())
        keys = tuple(k for k in keys if k)
        if len(keys) != accounts:
            raise ValueError(f"--key-file holds {len(keys)} keys for {accounts} accounts: "
                             "give one key per account, a line each")
    elif args.key:
        if accounts != 1:
            raise ValueError("--key names one key: with --accounts, give --key-file or none")
        keys = (args.key,)
    else:
        keys = tuple(generate_key() for _ in range(accounts))
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        api_keys=keys,
        accounts=accounts,
        instances=args.instances,
        buckets=args.buckets,
        seed=args.seed,
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        fault_500=args.fault_500,
        fault_429=args.fault_429,
        fault_reset=args.fault_reset,
        fault_slow=args.fault_slow,
        fault_malformed=args.fault_malformed,
        slow_seconds=args.slow_seconds,
        churn_interval=args.churn_interval,
        bucket_page_size=args.bucket_page_size,
        cursor_max_age=args.cursor_max_age,
        pending_seconds=args.pending_seconds,
    )


class _StopRequestedError(Exception):
    """Raised by the signal handler while the fleet is being built."""


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; print the base URL and the keys (one per account)
    first, a line each. Exit code."""
    try:
        config = config_from_args(args)
    except OSError as exc:
        print(f"{_PROG}: cannot read key file: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 2
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    # Signals that arrive between building the fleet and the event loop's handlers.
    pending: list[int] = []
    # Imported here, not at the top: ``nexus-audit``'s parser names these flags for every
    # command, and the event loop and aiohttp are this command's alone.
    import asyncio

    try:
        sim = _build(config, pending)
        if sim is None:
            return 0
        asyncio.run(_serve(sim, pending))
    except OSError as exc:
        print(
            f"{_PROG}: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; "
            "choose another --port (0 picks a free one)",
            file=sys.stderr,
        )
        return 1
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    return 0


def _build(config: SimulatorConfig, pending: list[int]) -> Simulator | None:
    """The simulator with its fleet, or None if SIGINT/SIGTERM came while building it.

    Building a large fleet takes seconds of pure Python, when the event loop's signal
    handlers could not run: a signal now aborts the build at once instead.
    """

    def abort(signum: int, frame: object) -> None:
        raise _StopRequestedError

    def note(signum: int, frame: object) -> None:
        pending.append(signum)

    from .runner import Simulator

    try:
        try:
            for sig in _STOP_SIGNALS:
                signal.signal(sig, abort)
            sim = Simulator(config)
        finally:
            for sig in _STOP_SIGNALS:
                signal.signal(sig, note)
    except _StopRequestedError:
        return None
    return sim


async def _serve(sim: Simulator, pending: list[int]) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    if pending:
        return
    await sim.start()
    # The fleet lives as long as the process: keep the collector from walking it again,
    # while serving and at exit (unfrozen, the last collection of a million-instance
    # fleet made a stop take seconds).
    gc.freeze()
    try:
        sys.stdout.write(f"{sim.url}\n" + "".join(f"{key}\n" for key in sim.keys))
        sys.stdout.flush()
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m nexus_audit.simulator``)."""
    parser = argparse.ArgumentParser(
        prog="python -m nexus_audit.simulator",
        description="Serve a simulated CloudNexus v2 API.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
