"""Durations, points in time and windows, plus the one injectable clock.

Pure functions over plain values: ``parse_duration("90m")``, ``parse_time("30d", now)``,
``Window``. Everything that reads the current time takes a :class:`Clock`, so tests
drive time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from nexus_audit.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# ASCII digits only: Python's \d and int() also take other scripts' digits (an
# Arabic-Indic one before "h" was taken as 1h).
_DURATION = re.compile(r"([0-9]+)([smhdw])")
_DURATION_FULL = re.compile(r"(?:[0-9]+[smhdw])+")
#: What the CLI's errors call a window's two ends (``Window.parse(..., names=FLAG_NAMES)``).
FLAG_NAMES: Final = ("--since", "--until")


def parse_duration(text: str, *, parameter: str = "duration") -> timedelta:
    """Parse ``45s``, ``90m``, ``12h``, ``30d``, ``2w`` or a sum like ``1h30m``.

    Raises :class:`UsageError` naming ``parameter`` for anything else, zero included.
    """
    raw = text.strip().lower()
    if not _DURATION_FULL.fullmatch(raw):
        raise UsageError(
            f"{parameter}: {text!r} is not a duration (use e.g. 45s, 90m, 12h, 30d, 2w)",
            parameter=parameter,
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(raw))
    if seconds <= 0:
        raise UsageError(f"{parameter}: the duration must be positive", parameter=parameter)
    if seconds > 100 * 365 * 86400:
        raise UsageError(f"{parameter}: {text!r} is longer than a century", parameter=parameter)
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Render a duration compactly, largest units first (``1d2h``, ``45s``, ``0s``)."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return sign + "".join(parts)


def parse_time(text: str, now: datetime, *, parameter: str = "time") -> datetime:
    """Parse an ISO 8601 time or a duration meaning "that long before ``now``".

    Naive ISO times are taken as UTC. The result is always timezone-aware UTC.
    """
    raw = text.strip()
    if not raw:
        raise UsageError(f"{parameter}: empty value", parameter=parameter)
    if _DURATION_FULL.fullmatch(raw.lower()):
        return now - parse_duration(raw, parameter=parameter)
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{parameter}: {text!r} is neither a duration (30d) nor an ISO 8601 time "
            "(2026-11-01T00:00:00Z)",
            parameter=parameter,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+23:59 is before year 1 in UTC
        raise UsageError(f"{parameter}: {text!r} is outside the dates this tool can handle",
                         parameter=parameter) from None


def isoformat(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z`` and whole seconds, the report's time format."""
    if moment is None:
        return None
    return _iso_utc(moment)


# A report writes each crawl's time once per row it dates (300,000 drift rows of 720
# crawls in 30 days of a million instances): the few distinct times are formatted once.
@functools.lru_cache(maxsize=4096)
def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open interval of time ``[since, until)`` in UTC."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ValueError("Window bounds must be timezone-aware")
        if self.since >= self.until:
            raise UsageError(
                f"the window is empty: since {isoformat(self.since)} is not before "
                f"until {isoformat(self.until)}",
                parameter="since",
            )

    @classmethod
    def parse(cls, since: str, until: str | None, now: datetime, *,
              names: tuple[str, str] = ("since", "until")) -> Window:
        """Build a window from the CLI's/endpoint's ``since`` and optional ``until``.

        ``names`` are what errors call the two values: the endpoint's parameters by
        default, the flags (``--since``, ``--until``) for the CLI.
        """
        since_name, until_name = names
        end = parse_time(until, now, parameter=until_name) if until else now
        start = parse_time(since, now, parameter=since_name)
        if end > now + timedelta(minutes=5):
            raise UsageError(f"{until_name}: lies in the future", parameter=until_name)
        if start >= end:
            if until and _DURATION_FULL.fullmatch(since.strip().lower()):
                # `--since 30d --until 2026-01-01` reads as "the 30 days before": say how
                # it is, and offer the time meant.
                raise UsageError(
                    f"the window is empty: {since_name} {since.strip()} counts back from now "
                    f"({isoformat(start)}), which is not before {until_name} "
                    f"{isoformat(end)}; give {since_name} as a time, e.g. "
                    f"{isoformat(end - (now - start))}", parameter=since_name)
            raise UsageError(f"the window is empty: {since_name} {isoformat(start)} is not "
                             f"before {until_name if until else 'now'} {isoformat(end)}",
                             parameter=since_name)
        return cls(start, end)

    @property
    def length(self) -> timedelta:
        """How long the window is."""
        return self.until - self.since


class Clock(Protocol):
    """Where time comes from. Production uses :class:`SystemClock`; tests a fake."""

    def now(self) -> datetime:
        """The current wall time, timezone-aware UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals and budgets)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""


class SystemClock:
    """The real clock: wall time in UTC, ``time.monotonic``, ``asyncio.sleep``."""

    def now(self) -> datetime:
        """The current wall time, timezone-aware UTC."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running event loop."""
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to; ``sleep`` advances it instantly.

    Used by tests of the rate budget and the scheduler arithmetic: what would take
    minutes of real time runs in microseconds, deterministically.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._wall = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 1000.0
        self.slept: list[float] = []

    def now(self) -> datetime:
        """The fake wall time."""
        return self._wall

    def monotonic(self) -> float:
        """The fake monotonic time."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)

    def step_wall(self, moment: datetime) -> None:
        """Set the wall clock to ``moment`` (a clock step, even backwards); the monotonic
        clock does not move."""
        self._wall = moment

    async def sleep(self, seconds: float) -> None:
        """Record the sleep, advance time, and yield to the loop once."""
        seconds = max(0.0, seconds)
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)
