"""The CI skip guard: under CI a missing tool fails the test; no test skips around it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ci import skip_or_fail, under_ci

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.mark.parametrize(("value", "expected"), [
    (None, False), ("", False), ("0", False), ("false", False), ("False", False),
    ("true", True), ("1", True), ("yes", True), ("TRUE", True)])
def test_under_ci_reads_the_ci_variable(value: str | None, expected: bool) -> None:
    """``CI`` set to anything but an empty or false value means CI (``true``, ``1``...)."""
    env = {} if value is None else {"CI": value}
    assert under_ci(env) is expected


def outcome(reason: str) -> type[BaseException]:
    """What ``skip_or_fail(reason)`` raised (a skip or a failure), caught either way so a
    wrong outcome fails this test instead of skipping it."""
    outcomes = (pytest.skip.Exception, pytest.fail.Exception)
    with pytest.raises(outcomes, match=reason) as raised:
        skip_or_fail(reason)
    return raised.type


def test_skip_or_fail_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same call is a skip without CI and a failure, naming the reason, with it."""
    monkeypatch.delenv("CI", raising=False)
    assert outcome("no widget") is pytest.skip.Exception
    monkeypatch.setenv("CI", "true")
    assert outcome("no widget") is pytest.fail.Exception


def test_ci_run_exports_ci_itself() -> None:
    """``.ci/run`` sets ``CI=true`` before it runs the suite, whatever runs it."""
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    export = script.index("\nexport CI=true\n")
    assert export < script.index(".venv/bin/pytest")


def test_every_skip_goes_through_the_ci_guard() -> None:
    """No test module skips on its own (``pytest.skip``, ``skipif``, ``importorskip``):
    each skip that CI must never take goes through :func:`tests.ci.skip_or_fail`."""
    pattern = re.compile(r"pytest\.skip\(|mark\.skip(if)?\b|importorskip")
    offenders = [f"{path.name}:{n}" for path in sorted(TESTS.glob("*.py"))
                 if path.name not in ("ci.py", "test_ci.py")
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if pattern.search(line)]
    assert offenders == []
    assert len([p for p in TESTS.glob("*.py")
                if "skip_or_fail(" in p.read_text(encoding="utf-8")]) >= 6
