"""One rule for skips that CI must never take: ``skip_or_fail(reason)``.

Locally a test that needs something the machine lacks (promtool, a real Prometheus,
openssl, root to mount a tmpfs, ``renameat2(RENAME_EXCHANGE)``) is skipped with the
reason. Under CI (``CI`` set, as ``.ci/run`` exports it and hosted CI services do) the
same absence is a failure: ``.ci/run`` installs everything these tests need, so a skip
there would hide a regression behind a green run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NoReturn

import pytest

#: Values of ``CI`` that mean "not under CI" (unset counts as not set either).
_NOT_CI = frozenset({"", "0", "false", "no", "off"})


def under_ci(env: Mapping[str, str] | None = None) -> bool:
    """True when ``CI`` is set to anything but an empty or false value."""
    value = (os.environ if env is None else env).get("CI", "")
    return value.strip().lower() not in _NOT_CI


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason``; under CI fail it instead (the skip would hide a gap)."""
    if under_ci():
        pytest.fail(f"{reason} (under CI this is a failure, not a skip; .ci/run installs "
                    "what the tests need)", pytrace=False)
    pytest.skip(reason)
