"""Durations, times and windows: the pure arithmetic behind --since/--until."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_audit.domain.timeutil import (
    FakeClock,
    Window,
    format_duration,
    isoformat,
    parse_duration,
    parse_time,
)
from nexus_audit.errors import UsageError

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("90m", 5400), ("12h", 43200), ("30d", 2592000), ("2w", 1209600),
     ("1h30m", 5400), (" 7D ", 604800)],
)
def test_parse_duration_accepts_documented_units(text: str, seconds: int) -> None:
    """Every unit of the contract parses to the right number of seconds."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "d", "-5m", "5 m", "1.5h", "0s", "3y", "30dd",
                                  "99999999w", "\u0661h", "\u0663\u0660d", "1\u0660m",
                                  "\uff11h", "\u09e7h"])
def test_parse_duration_rejects_with_the_parameter_named(text: str) -> None:
    """Malformed, zero, unknown-unit and absurd durations are usage errors naming the flag."""
    with pytest.raises(UsageError) as info:
        parse_duration(text, parameter="--since")
    assert info.value.parameter == "--since"
    assert "--since" in str(info.value)


@given(st.integers(min_value=1, max_value=10 * 365 * 86400))
def test_format_then_parse_round_trips(seconds: int) -> None:
    """format_duration's output parses back to the same duration."""
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


def test_parse_time_takes_durations_and_iso_times() -> None:
    """A duration means that long before now; ISO times are UTC, naive ones taken as UTC."""
    assert parse_time("30d", NOW) == NOW - timedelta(days=30)
    assert parse_time("2026-11-01T00:00:00Z", NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01T01:00:00+01:00", NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "", "12:00", "\u0661h",
                                  "\u0662\u0660\u0662\u0666-03-01"])
def test_parse_time_rejects_garbage(text: str) -> None:
    """Anything that is neither a duration nor an ISO time is a usage error."""
    with pytest.raises(UsageError):
        parse_time(text, NOW, parameter="until")


def test_window_parse_and_validation() -> None:
    """A window needs since before until, and until not in the future."""
    window = Window.parse("1d", None, NOW)
    assert window.length == timedelta(days=1)
    assert window.until == NOW
    with pytest.raises(UsageError, match="empty"):
        Window.parse("1h", "2h", NOW)
    with pytest.raises(UsageError, match="future"):
        Window.parse("1h", "2027-01-01T00:00:00Z", NOW)
    with pytest.raises(UsageError, match="empty: since 1h counts back from now"):
        Window.parse("1h", "2h", NOW)


def test_duration_since_before_a_given_until_says_how_durations_count() -> None:
    """``--since 30d --until T`` (T long ago) counts from now; the error says so and offers
    the time the user probably meant. A time since gets the plain message, with the flags'
    names."""
    with pytest.raises(UsageError) as caught:
        Window.parse("30d", "2026-01-01T00:00:00Z", NOW, names=("--since", "--until"))
    assert str(caught.value) == (
        "the window is empty: --since 30d counts back from now (2026-10-29T12:00:00Z), "
        "which is not before --until 2026-01-01T00:00:00Z; give --since as a time, "
        "e.g. 2025-12-02T00:00:00Z")
    with pytest.raises(UsageError, match=r"empty: --since 2026-02-01T00:00:00Z is not before "
                       r"--until 2026-01-01T00:00:00Z$"):
        Window.parse("2026-02-01T00:00:00Z", "2026-01-01T00:00:00Z", NOW,
                     names=("--since", "--until"))
    with pytest.raises(UsageError, match=r"empty: since 2027-01-01T00:00:00Z is not before "
                       r"now 2026-11-28T12:00:00Z$"):
        Window.parse("2027-01-01T00:00:00Z", None, NOW)


def test_isoformat_is_utc_with_z() -> None:
    """Report times are whole-second UTC with a Z suffix."""
    moment = datetime(2026, 11, 28, 12, 0, 1, 500000, tzinfo=UTC)
    assert isoformat(moment) == "2026-11-28T12:00:01Z"
    assert isoformat(None) is None


async def test_fake_clock_sleep_advances_instantly() -> None:
    """FakeClock.sleep moves time forward without waiting and records the sleep."""
    clock = FakeClock(NOW)
    before = clock.monotonic()
    await clock.sleep(60)
    assert clock.monotonic() - before == 60
    assert clock.now() == NOW + timedelta(seconds=60)
    assert clock.slept == [60]
