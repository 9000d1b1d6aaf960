"""Structured logs: JSON lines off a terminal, and secrets never rendered."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
import structlog

from nexus_audit.logs import REDACTED, configure_logging, get_logger

KEY = "nx_live_sk_logtest_1234567890"


def test_json_lines_with_secret_redacted_everywhere() -> None:
    """A key in a value, a nested value or an exception's text is replaced before output."""
    out = io.StringIO()
    configure_logging(secrets=[KEY], json=True, stream=out)
    log = get_logger("test")
    log.info("crawl.finished", url=f"http://x/?k={KEY}", nested={"h": [f"Bearer {KEY}"]})
    try:
        raise RuntimeError(f"boom with {KEY}")
    except RuntimeError:
        log.exception("crawl.crashed")
    structlog.reset_defaults()
    text = out.getvalue()
    assert KEY not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["event"] == "crawl.finished"
    assert lines[0]["component"] == "test"
    assert REDACTED in lines[0]["url"]
    assert REDACTED in lines[1]["exception"]


def test_standard_library_records_become_json_lines_too() -> None:
    """A library logging through the standard library (APScheduler's job errors) writes a
    JSON line with its level, logger name and traceback, secrets redacted, not plain text."""
    out = io.StringIO()
    configure_logging(secrets=[KEY], json=True, stream=out)
    root = logging.getLogger()
    try:
        try:
            raise RuntimeError(f"job failed with {KEY}")
        except RuntimeError:
            logging.getLogger("apscheduler.executors.default").error(
                "Error running job %s", "crawl:prod:instances", exc_info=True)
        logging.getLogger("aiohttp.server").info("chatter below the level")
    finally:
        for handler in root.handlers[:]:
            if handler.__class__.__name__ == "_StdlibHandler":
                root.removeHandler(handler)
        structlog.reset_defaults()
    text = out.getvalue()
    assert KEY not in text
    (line,) = text.splitlines()
    event = json.loads(line)
    assert event["event"] == "Error running job crawl:prod:instances"
    assert event["level"] == "error"
    assert event["component"] == "apscheduler.executors.default"
    assert "Traceback" in event["exception"]
    assert REDACTED in event["exception"]


def test_loggers_made_before_configuration_follow_it() -> None:
    """A module-level logger created before configure_logging still uses the new setup."""
    log = get_logger("early")
    out = io.StringIO()
    configure_logging(json=True, stream=out)
    log.info("late.event")
    structlog.reset_defaults()
    assert json.loads(out.getvalue())["event"] == "late.event"


def test_default_stream_follows_sys_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit stream, lines go to the sys.stderr of the moment of writing."""
    configure_logging(json=True)
    replacement = io.StringIO()
    monkeypatch.setattr(sys, "stderr", replacement)
    get_logger("x").info("after.swap")
    structlog.reset_defaults()
    assert json.loads(replacement.getvalue())["event"] == "after.swap"
