"""Setting values from what a person wrote: durations, numbers, booleans, text, addresses.

The parsers the settings declared in :mod:`nexus_audit.config` use. Each takes the value
(a string from the environment, or whatever TOML made of the file's text) and the
setting's name as the person knows it (a variable's, else the file's key), and returns the
checked value or raises :class:`~nexus_audit.errors.ConfigError` naming that setting.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from nexus_audit.domain.timeutil import parse_duration
from nexus_audit.errors import ConfigError, UsageError


def duration(value: Any, setting: str) -> timedelta:
    """``"45s"``, ``"90m"``, ``"1h30m"``...: a positive duration."""
    if not isinstance(value, str):
        raise ConfigError(f"{setting}: expected a duration string like '1h', got {value!r}")
    try:
        return parse_duration(value, parameter=setting)
    except UsageError as exc:
        raise ConfigError(str(exc), parameter=setting) from None


def duration_or_zero(value: Any, setting: str) -> timedelta:
    """A :func:`duration`, or ``"0"`` (``"0s"``): none at all."""
    given = value.strip() if isinstance(value, str) else value
    return timedelta(0) if given in ("0", "0s") else duration(given, setting)


def positive_int(value: Any, setting: str) -> int:
    """A whole number above 0, in ASCII digits when written as text."""
    if isinstance(value, str):
        digits = value.strip()
        # ASCII digits only: int() also takes other scripts' digits, signs and underscores.
        if not (digits.isascii() and digits.isdigit()):
            raise ConfigError(f"{setting}: expected a whole number, got {value!r}")
        value = int(digits)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{setting}: expected a positive whole number, got {value!r}")
    return value


def seconds(value: Any, setting: str) -> float:
    """A positive number of seconds (a TOML integer or float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{setting}: expected positive seconds, got {value!r}")
    return float(value)


def boolean(value: Any, setting: str) -> bool:
    """``true``/``false`` in TOML, or ``1``, ``true``, ``yes``, ``on`` and their opposites."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{setting}: expected true or false, got {value!r}")


def utf8(value: str, setting: str, error: type[UsageError] = ConfigError) -> str:
    """``value`` if it is Unicode text. Bytes the environment or the command line could not
    decode reach Python as lone surrogates (``\\udcff``), which no UTF-8 reader takes:
    DuckDB refused such an account name or database path at its first query, the socket
    layer such a listen address with a traceback."""
    if not value.isascii():  # O(1): the common case ends here
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise error(f"{setting}: {value!r} is not UTF-8 text", parameter=setting) from None
    return value


def text(value: Any, setting: str) -> str:
    """A string with something in it, stripped of surrounding white space, in UTF-8."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{setting}: expected a non-empty string, got {value!r}")
    return utf8(value.strip(), setting)


def validate_listen(value: str, setting: str = "listen") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9747`` for IPv6); ``UsageError`` when malformed."""
    utf8(value, setting, UsageError)
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    ascii_port = port_text.isascii() and port_text.isdigit()  # not "٩٧٤٧"
    if not sep or not host or not ascii_port or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"{setting}: {value!r} is not HOST:PORT (e.g. 127.0.0.1:9747)",
                         parameter=setting)
    return host, int(port_text)


def listen_address(value: Any, setting: str) -> str:
    """A listen address, ``HOST:PORT`` (see :func:`validate_listen`)."""
    address = text(value, setting)
    validate_listen(address, setting)
    return address
