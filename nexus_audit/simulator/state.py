"""Everything one simulator instance holds, wired from a SimulatorConfig."""

from __future__ import annotations

import random
import secrets

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


class SimState:
    """The simulator's state and collaborators; the HTTP layer only reads and calls these."""

    def __init__(self, config: SimulatorConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.fleet = Fleet.generate(
            seed=config.seed,
            instances=config.instances,
            buckets=config.buckets,
            clock=self.clock,
            pending_seconds=config.pending_seconds,
        )
        self.keys = KeyRing(config.api_keys)
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
        self.objects = ObjectStore()
        self.uploads = MultipartUploads(min_part_bytes=config.min_part_bytes)
        self.latency_rng = random.Random(f"{config.seed}:latency")
