"""Structured logging: JSON lines off a terminal, readable lines on one, secrets redacted.

Every process calls :func:`configure_logging` once with the secrets in force; the
redactor replaces any of them wherever it appears in an event (values, nested text,
exception text) before anything is rendered. On a terminal, every text in an event is
escaped (:func:`nexus_audit.domain.escape.terminal`): an API value or error body logged there
cannot send control sequences or forge lines (JSON lines escape them by themselves).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Final, TextIO, cast

import structlog

from nexus_audit.domain import escape

REDACTED: Final = "[REDACTED]"


class SecretRedactor:
    """A structlog processor that scrubs known secret values out of every event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Replace the set of secrets (longest first, so a key containing another wins)."""
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._walk(v) for v in value)
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        return value

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Scrub the event in place (structlog processor protocol)."""
        for key in list(event):
            event[key] = self._walk(event[key])
        return event


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing.

    Binding the stream object at configuration time would keep writing to a stream that
    was since replaced and closed (a test harness's capture, a daemon's redirect).
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


#: The keys the console renderer writes as they are; it writes every other value with
#: ``repr`` (``repr_native_str``), which escapes what is not printable.
_RAW_KEYS: Final = ("event", "exception", "stack")


def terminal_safe(logger: Any, method: str,
                  event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Escape the texts the console renderer writes raw (structlog processor): the
    message in full; a rendered traceback (``exception``, ``stack``) keeps its lines."""
    for key in _RAW_KEYS:
        value = event.get(key)
        if isinstance(value, str):
            event[key] = escape.terminal(value, keep_newlines=key != "event")
    return event


#: The process-wide redactor; :func:`configure_logging` feeds it the secrets in force.
redactor: Final = SecretRedactor()


def configure_logging(
    *,
    secrets: Iterable[str] = (),
    json: bool | None = None,
    level: int = logging.INFO,
    stream: TextIO | None = None,
) -> None:
    """Set up structlog for this process.

    ``json=None`` picks JSON lines unless ``stream`` is a terminal. Log lines go to
    standard error so a command's output (a report, the simulator's URL) stays clean.
    """
    out: TextIO = stream or cast(TextIO, _CurrentStderr())
    redactor.update(secrets)
    if json is None:
        json = not out.isatty()
    # format_exc_info renders exceptions into text *before* the redactor runs, so an
    # exception message that quotes a secret is scrubbed too.
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        # repr_native_str: a value with no space (an id holding ESC) would be written raw.
        else structlog.dev.ConsoleRenderer(colors=False, repr_native_str=True)
    )
    if not json:
        processors.append(terminal_safe)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(out, processors, renderer)


class _StdlibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the root handler :func:`configure_logging` installed (replaced on reconfigure)."""


def _component(logger: Any, method: str, event: MutableMapping[str, Any]
               ) -> MutableMapping[str, Any]:
    """A standard-library record's logger name as the event's ``component``."""
    record = event.get("_record")
    if record is not None:
        event.setdefault("component", record.name)
    return event


def _route_stdlib_logging(out: TextIO, processors: list[Any], renderer: Any) -> None:
    """Render the standard library's log records (APScheduler, aiohttp, asyncio) through
    the same processors, so standard error stays one format (JSON lines off a terminal):
    without a handler, Python's last-resort handler printed plain-text tracebacks."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_component],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *processors,
                    renderer],
    )
    handler = _StdlibHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries' warnings and errors, not their chatter


def get_logger(name: str) -> Any:
    """A lazy structlog logger whose events carry ``component=name``.

    Lazy on purpose: modules create their logger at import time, before
    :func:`configure_logging` (or a test's ``capture_logs``) has run; the proxy picks up
    the configuration in force at each call instead of the one at import.
    """
    return structlog.get_logger(component=name)
