"""Everything one simulator instance holds, wired from a SimulatorConfig."""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass

from .auth import KeyRing
from .clock import Clock, SystemClock
from .config import SimulatorConfig
from .cursor import CursorCodec
from .faults import FaultInjector
from .fleet import Fleet
from .multipart import MultipartUploads
from .objects import ObjectStore
from .ratelimit import FixedWindowLimiter
from .requestlog import RequestLog


@dataclass(frozen=True, slots=True)
class Account:
    """One account: what its keys see and change (its fleet, its objects, its uploads)."""

    index: int
    fleet: Fleet
    objects: ObjectStore
    uploads: MultipartUploads


class SimState:
    """The simulator's state and collaborators; the HTTP layer only reads and calls these.

    ``fleet``, ``objects`` and ``uploads`` are the first account's (the only one unless
    the config asks for more); a request acts on its key's account (:meth:`account`).
    """

    def __init__(self, config: SimulatorConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.accounts = tuple(
            Account(
                i,
                Fleet.generate(
                    seed=config.seed + i,
                    instances=config.instances,
                    buckets=config.buckets,
                    clock=self.clock,
                    pending_seconds=config.pending_seconds,
                ),
                ObjectStore(),
                MultipartUploads(min_part_bytes=config.min_part_bytes),
            )
            for i in range(config.accounts)
        )
        primary = self.accounts[0]
        self.fleet, self.objects, self.uploads = primary.fleet, primary.objects, primary.uploads
        self.keys = KeyRing(config.api_keys, accounts=config.accounts)
        self.limiter = FixedWindowLimiter(config.rate_limit, config.rate_window)
        self.faults = FaultInjector(
            seed=config.seed,
            p500=config.fault_500,
            p429=config.fault_429,
            preset=config.fault_reset,
            pslow=config.fault_slow,
            pmalformed=config.fault_malformed,
            slow_seconds=config.slow_seconds,
        )
        # Per simulator unless pinned, so cursors from another run are rejected.
        secret = config.cursor_secret or secrets.token_bytes(32)
        self.codec = CursorCodec(secret, max_age=config.cursor_max_age)
        self.request_log = RequestLog()
        self.latency_rng = random.Random(f"{config.seed}:latency")

    def account(self, key_id: str) -> Account:
        """The account of the key whose id is ``key_id``."""
        return self.accounts[self.keys.account_of(key_id)]
