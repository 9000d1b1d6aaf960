"""The alert rules: promtool accepts them, and each alert's unit tests fire and stay quiet."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "rules" / "nexus-audit.rules.yml"
RULE_TESTS = sorted((ROOT / "prometheus" / "rules" / "tests").glob("*.yml"))

#: The alerts issue 6 asks for, by what they catch.
REQUIRED_ALERTS = {
    "NexusAuditCrawlsFailing",       # crawls failing
    "NexusAuditNoRecentSuccess",     # no successful crawl for too long
    "NexusPublicBucketAppeared",     # a public bucket appeared
    "NexusAuditRateLimited",         # 429s climbing
    "NexusCostRunRateJump",          # cost run-rate jump
    "NexusStaleInstancesPilingUp",   # stale instances piling up
}


def alert_names(rules_text: str) -> list[str]:
    """The names of the alerting rules in a rules file, in order."""
    return re.findall(r"^\s*- alert:\s*(\S+)\s*$", rules_text, flags=re.MULTILINE)


def eval_cases(test_text: str) -> list[tuple[str, bool]]:
    """(alertname, expects_alerts) for every ``alert_rule_test`` case of a promtool test file."""
    cases = []
    for chunk in re.split(r"^\s*- eval_time:", test_text, flags=re.MULTILINE)[1:]:
        name = re.search(r"^\s*alertname:\s*(\S+)", chunk, flags=re.MULTILINE)
        assert name is not None, f"an alert_rule_test case without alertname: {chunk[:80]!r}"
        quiet = re.search(r"^\s*exp_alerts:\s*\[\]\s*$", chunk, flags=re.MULTILINE)
        cases.append((name.group(1), quiet is None))
    return cases


def run_promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool with a deadline, capturing its output."""
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_rules_file_passes_promtool_check(promtool: str) -> None:
    """`promtool check rules` accepts the rules file without warnings."""
    result = run_promtool(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in (result.stdout + result.stderr).upper()


def test_every_required_alert_exists() -> None:
    """Each alert the issue asks for is defined, and no alert name is defined twice."""
    names = alert_names(RULES.read_text(encoding="utf-8"))
    assert set(names) >= REQUIRED_ALERTS
    assert len(names) == len(set(names))


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Every alert in the rules file is unit-tested both firing and not firing."""
    cases = [case for path in RULE_TESTS for case in eval_cases(path.read_text(encoding="utf-8"))]
    for name in alert_names(RULES.read_text(encoding="utf-8")):
        assert (name, True) in cases, f"{name}: no unit test expects it to fire"
        assert (name, False) in cases, f"{name}: no unit test expects it to stay quiet"


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.stem)
def test_rule_unit_tests_pass(promtool: str, test_file: Path) -> None:
    """`promtool test rules` passes for this unit-test file."""
    result = run_promtool(promtool, "test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alert", alert_names(RULES.read_text(encoding="utf-8")))
def test_unit_tests_catch_a_rule_that_never_fires(
    promtool: str, tmp_path: Path, alert: str
) -> None:
    """With one alert's expression made never true, its unit tests fail (they have teeth)."""
    rules_text = RULES.read_text(encoding="utf-8")
    broken, count = re.subn(
        rf"(- alert: {alert}\n(?:\s*#.*\n)*\s*expr:) (?:\|\n(?:\s{{10,}}.*\n)+|.*\n)",
        r"\1 vector(1) == 0\n", rules_text)
    assert count == 1, f"could not find the expression of {alert}"
    (tmp_path / "rules" / "tests").mkdir(parents=True)
    (tmp_path / "rules" / RULES.name).write_text(broken, encoding="utf-8")
    for path in RULE_TESTS:
        if (alert, True) in eval_cases(path.read_text(encoding="utf-8")):
            shutil.copy(path, tmp_path / "rules" / "tests" / path.name)
    result = run_promtool(promtool, "test", "rules",
                          *sorted((tmp_path / "rules" / "tests").glob("*.yml")))
    assert result.returncode != 0
    assert alert in result.stdout + result.stderr
