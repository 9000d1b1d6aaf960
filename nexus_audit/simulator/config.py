"""The simulator's configuration: one immutable value object with named defaults."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

DEFAULT_INSTANCES = 200
DEFAULT_BUCKETS = 20
DEFAULT_SEED = 1
DEFAULT_RATE_LIMIT = 1000
DEFAULT_RATE_WINDOW = 60.0
DEFAULT_CURSOR_MAX_AGE = 3600.0
DEFAULT_PENDING_SECONDS = 10.0
DEFAULT_SLOW_SECONDS = 5.0
# The reference says uploads over 100 MB go multipart, so one PUT carries at most that.
DEFAULT_MAX_OBJECT_BYTES = 100 * 1024 * 1024
# Multipart uploads: every part but the last holds at least this much.
DEFAULT_MIN_PART_BYTES = 8 * 1024 * 1024
KEY_PREFIX = "nx_test_sk_"


def generate_key() -> str:
    """Return a fresh random test API key (``nx_test_sk_`` + 32 hex digits)."""
    return KEY_PREFIX + secrets.token_hex(16)


def _one_random_key() -> tuple[str, ...]:
    return (generate_key(),)


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """Everything that shapes one simulator run; tests and the CLI build one of these.

    Probabilities are per API request, in [0, 1]. ``api_keys[0]`` is the primary key.
    ``accounts``: how many accounts the simulator holds, each with a fleet of its own
    (``instances`` and ``buckets`` each, seeds ``seed``, ``seed + 1``, ...); key ``i``
    belongs to account ``i % accounts``, so with one account every key sees the same fleet.
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_keys: tuple[str, ...] = field(default_factory=_one_random_key)
    accounts: int = 1
    instances: int = DEFAULT_INSTANCES
    buckets: int = DEFAULT_BUCKETS
    seed: int = DEFAULT_SEED
    latency: float = 0.0
    latency_jitter: float = 0.0
    rate_limit: int = DEFAULT_RATE_LIMIT
    rate_window: float = DEFAULT_RATE_WINDOW
    fault_500: float = 0.0
    fault_429: float = 0.0
    fault_reset: float = 0.0
    fault_slow: float = 0.0
    fault_malformed: float = 0.0
    slow_seconds: float = DEFAULT_SLOW_SECONDS
    churn_interval: float = 0.0
    bucket_page_size: int = 0
    cursor_max_age: float = DEFAULT_CURSOR_MAX_AGE
    pending_seconds: float = DEFAULT_PENDING_SECONDS
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    min_part_bytes: int = DEFAULT_MIN_PART_BYTES
    cursor_secret: bytes | None = None

    def __post_init__(self) -> None:
        if not self.api_keys or not all(isinstance(k, str) and k for k in self.api_keys):
            raise ValueError("api_keys must hold at least one non-empty key")
        if not 1 <= self.accounts <= len(self.api_keys):
            raise ValueError(f"accounts must be >= 1 and have a key each: {self.accounts} "
                             f"accounts, {len(self.api_keys)} keys")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        for name in ("instances", "buckets", "bucket_page_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.rate_limit < 1:
            raise ValueError("rate_limit must be >= 1")
        for name in ("rate_window", "cursor_max_age"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in (
            "latency",
            "latency_jitter",
            "slow_seconds",
            "churn_interval",
            "pending_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("fault_500", "fault_429", "fault_reset", "fault_slow", "fault_malformed"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        if self.max_object_bytes < 1:
            raise ValueError("max_object_bytes must be >= 1")
        if self.min_part_bytes < 1:
            raise ValueError("min_part_bytes must be >= 1")

    @property
    def key(self) -> str:
        """The primary API key."""
        return self.api_keys[0]
