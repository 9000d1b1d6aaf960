"""Golden files under tests/golden/, refreshed only with ``pytest --update-golden``.

``golden(name, text)`` compares ``text`` with ``tests/golden/<name>``; with the option it
rewrites the file instead (review the diff before committing). A missing golden file
fails the test with a hint, never silently passes. Files are compared byte for byte
(line endings included).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--update-golden``."""
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* from the current output")


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """Compare text with a golden file (or rewrite it under --update-golden)."""
    update = bool(request.config.getoption("--update-golden"))

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
            return
        if not path.exists():
            pytest.fail(f"golden file {path} is missing; run pytest --update-golden")
        # Bytes, not text mode: a change of line endings (CSV's \r\n) is a change too.
        expected = path.read_bytes().decode("utf-8")
        if text != expected:
            pytest.fail(f"output differs from {path}; if the change is intended, run pytest "
                        "--update-golden and review the diff:\n" + visible_diff(expected, text),
                        pytrace=False)

    return check


def visible_diff(expected: str, actual: str, *, limit: int = 80) -> str:
    """A unified diff of the golden text and the output (line endings shown), cut to
    ``limit`` lines."""
    lines = list(difflib.unified_diff(
        [line.replace("\r", "\\r") + "\n" for line in expected.split("\n")],
        [line.replace("\r", "\\r") + "\n" for line in actual.split("\n")],
        fromfile="golden", tofile="output", n=2))
    shown = "".join(lines[:limit])
    return shown + (f"... and {len(lines) - limit} more diff lines\n" if len(lines) > limit
                    else "")
