"""When to retry a request and how long to wait: pure functions of plain values.

* 500/502/503/504, timeouts, connection resets and unreadable 2xx bodies are transient:
  up to ``max_retries`` retries with capped exponential backoff and full jitter
  (``uniform(0, min(max_delay, base_delay * 2**(n-1)))``, AWS's "full jitter").
* 429 means the key is spent (by us or by another tool on it): wait ``Retry-After``, else
  until ``X-RateLimit-Reset``, plus jitter, then retry. These waits are the server's
  instruction, not a sign of failure, so they have their own allowance
  (``max_rate_limited`` retries and ``max_rate_limit_wait`` seconds in total per request).
* 400, 401, 403, 404 and anything else: fail at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Final, Literal

TRANSIENT_STATUSES: Final = frozenset({500, 502, 503, 504})

Verdict = Literal["ok", "transient", "rate_limited", "fatal"]


def classify(status: int) -> Verdict:
    """What an HTTP status means for the retry loop."""
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        return "rate_limited"
    if status in TRANSIENT_STATUSES:
        return "transient"
    return "fatal"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Bounds and backoff of the retry loop (defaults suit the production API)."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_rate_limited: int = 10
    max_rate_limit_wait: float = 600.0
    #: Upper bound of the jitter added to a 429 wait.
    rate_limit_jitter: float = 1.0
    #: Wait after a 429 that says neither Retry-After nor Reset.
    default_rate_limit_wait: float = 1.0

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full-jitter delay before transient retry number ``retry`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** max(0, retry - 1))
        return rng.uniform(0.0, ceiling)

    def rate_limit_wait(
        self,
        *,
        retry_after: float | None,
        reset_epoch: float | None,
        now_epoch: float,
        rng: random.Random,
    ) -> float:
        """Seconds to wait after a 429: Retry-After, else Reset, else a default; plus jitter."""
        if retry_after is not None:
            base = retry_after
        elif reset_epoch is not None:
            base = reset_epoch - now_epoch
        else:
            base = self.default_rate_limit_wait
        base = max(0.0, base)
        # Jitter proportional to the wait (10%), at least a little, never more than the cap.
        spread = min(self.rate_limit_jitter, max(0.05, 0.1 * base))
        return base + rng.uniform(0.0, spread)


DEFAULT_RETRY_POLICY: Final = RetryPolicy()


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            return None
        seconds = (moment - now).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)


#: The largest magnitude an integer header may have (a signed 64-bit integer): beyond it
#: the value is no count or time any API means, and would overflow a float later.
HEADER_INT_MAX: Final = 2**63 - 1


def parse_int_header(value: str | None) -> int | None:
    """An integer header (``X-RateLimit-*``), or None if absent, malformed or beyond
    :data:`HEADER_INT_MAX` either way."""
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        try:
            number = int(float(value.strip()))
        except (ValueError, OverflowError):
            return None
    return number if abs(number) <= HEADER_INT_MAX else None
