"""The policy file: parsing, the shipped example, and precise errors (file, line, field)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from nexus_audit.config import load_settings
from nexus_audit.domain.policy import (
    RULES,
    SEVERITIES,
    key_lines,
    load_configured,
    load_policy,
    parse_policy,
    parse_size,
    raised,
)
from nexus_audit.errors import ConfigError

GOOD = b"""\
# a comment
[baseline]
allowed_regions = [
    "eu-1",   # [not a table]
    "us-1",
]
required_tags = ["team", "env"]
max_stopped = "14d"
max_public_bucket_size = "10GB"

[[exceptions]]
bucket = "site-*"
reason = "static website"
owner = "web@example.com"
expires = 2026-06-30

[[exceptions]]
bucket = "bkt-dl"
reason = "downloads"
owner = "platform@example.com"
expires = 2026-07-01T12:00:00Z
rules = ["bucket.public", "bucket.public_too_large"]
account = "prod"
"""


def error_of(text: str) -> str:
    """The message of the ConfigError that parsing ``text`` raises."""
    with pytest.raises(ConfigError) as info:
        parse_policy(text.encode(), "p.toml")
    return str(info.value)


def test_a_full_policy_parses() -> None:
    """Baselines, both exceptions and their defaults come out as written."""
    policy = parse_policy(GOOD, "p.toml")
    b = policy.baseline
    assert b.allowed_regions == ("eu-1", "us-1")
    assert b.required_tags == ("team", "env")
    assert b.max_stopped == timedelta(days=14)
    assert b.max_public_bucket_bytes == 10 * 10**9
    first, second = policy.exceptions
    assert first.pattern == "site-*"
    assert first.rules == ("bucket.public",)
    assert first.account is None
    assert first.expires == datetime(2026, 7, 1, tzinfo=UTC)  # through June 30th
    assert first.expires_text == "2026-06-30"
    assert first.line == 11
    assert second.expires == datetime(2026, 7, 1, 12, tzinfo=UTC)
    assert second.rules == ("bucket.public", "bucket.public_too_large")
    assert second.account == "prod"
    assert policy.rules == tuple(RULES)
    assert policy.digest.startswith("sha256:")


def test_an_empty_policy_judges_public_buckets_only() -> None:
    """Without baselines only bucket.public is on; each baseline key switches its rule on."""
    assert parse_policy(b"", "p.toml").rules == ("bucket.public",)
    assert parse_policy(b'[baseline]\nmax_stopped = "1d"\n', "p.toml").rules == (
        "bucket.public", "instance.stopped_too_long")


def test_the_shipped_example_is_valid_and_switches_every_rule_on() -> None:
    """nexus_audit/data/policy.example.toml ships in the package and parses."""
    data = resources.files("nexus_audit.data").joinpath("policy.example.toml").read_bytes()
    policy = parse_policy(data, "policy.example.toml")
    assert policy.rules == tuple(RULES)
    assert len(policy.exceptions) == 2
    assert all(e.line is not None for e in policy.exceptions)


def test_exception_matching_by_id_pattern_account_and_rule() -> None:
    """An exception covers ids matching its pattern, in its account, under its rules only."""
    policy = parse_policy(GOOD, "p.toml")
    site, dl = policy.exceptions
    assert site.covers("any", "bucket.public", "site-a")
    assert not site.covers("any", "bucket.public", "my-site-a")
    assert not site.covers("any", "bucket.public_too_large", "site-a")
    assert dl.covers("prod", "bucket.public_too_large", "bkt-dl")
    assert not dl.covers("staging", "bucket.public", "bkt-dl")
    assert policy.exception_for("prod", "bucket.public", "site-x") is site
    assert policy.exception_for("prod", "instance.region", "site-x") is None


def test_the_longest_lasting_matching_exception_wins() -> None:
    """Two exceptions matching one bucket: the one expiring last covers it."""
    policy = parse_policy(b"""
[[exceptions]]
bucket = "b-*"
reason = "r"
owner = "o"
expires = 2026-01-01
[[exceptions]]
bucket = "b-1"
reason = "r"
owner = "o"
expires = 2027-01-01
""", "p.toml")
    chosen = policy.exception_for("a", "bucket.public", "b-1")
    assert chosen is not None
    assert chosen.pattern == "b-1"


@pytest.mark.parametrize(("value", "expected"), [
    (0, 0), (123, 123), ("10GB", 10 * 10**9), ("1.5TB", 15 * 10**11), ("500 mb", 5 * 10**8),
    ("7B", 7)])
def test_sizes(value: object, expected: int) -> None:
    """Sizes are integer bytes or decimal units (1 GB = 10^9 bytes)."""
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["10GiB", "ten GB", -1, True, 1.5, "GB", "\u0661\u0660GB",
                                   "10\u212aB"])
def test_bad_sizes(value: object) -> None:
    """Binary units, words, negatives, booleans and floats are refused."""
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


def test_raised_severity() -> None:
    """An expired exception raises the severity one step; critical stays critical."""
    assert [raised(s) for s in SEVERITIES] == ["critical", "critical", "high", "medium"]


@pytest.mark.parametrize(("text", "expected"), [
    ('colour = "red"\n', "p.toml:1: colour: unknown key"),
    ('[baseline]\nallowed_regions = ["a"]\nmax_stoped = "1d"\n',
     "p.toml:3: baseline.max_stoped: unknown key"),
    ('[baseline]\n\nmax_stopped = "soon"\n', "p.toml:3: baseline.max_stopped: 'soon' is not a"),
    ("[baseline]\nmax_stopped = 14\n",
     'p.toml:2: baseline.max_stopped: expected a duration like "14d"'),
    ('[baseline]\nmax_public_bucket_size = "10GiB"\n',
     "p.toml:2: baseline.max_public_bucket_size: expected integer bytes"),
    ("[baseline]\nallowed_regions = []\n",
     "p.toml:2: baseline.allowed_regions: expected a non-empty array"),
    ('[baseline]\nrequired_tags = [\n  "team",\n  "team",\n]\n',
     "p.toml:2: baseline.required_tags: lists a value twice"),
    ('[baseline]\nrequired_tags = ["team", 3]\n',
     "p.toml:2: baseline.required_tags[1]: expected a non-empty string"),
    ("baseline = 3\n", "p.toml:1: baseline: expected a table"),
    ('[exceptions]\nbucket = "x"\n', "p.toml:1: exceptions: expected an array of tables"),
    ('[[exceptions]]\nbucket = "a"\nreason = "r"\nowner = "o"\nexpires = 2026-01-01\n\n'
     '[[exceptions]]\nbucket = "b"\nreason = "r"\nexpires = 2026-01-01\n',
     "p.toml:7: exceptions[1].owner: missing"),
    ('[[exceptions]]\nbucket = "a"\nreason = "r"\nowner = "o"\nexpires = "next year"\n',
     "p.toml:5: exceptions[0].expires: expected a date like 2026-12-31, got 'next year'"),
    ('[[exceptions]]\nbucket = "a"\nreason = "r"\nowner = "o"\nexpires = 2026-01-01\n'
     'rules = ["instance.region"]\n',
     "p.toml:6: exceptions[0].rules[0]: 'instance.region' is not a bucket rule"),
    ('[[exceptions]]\nbucket = "a"\nreason = "  "\nowner = "o"\nexpires = 2026-01-01\n',
     "p.toml:3: exceptions[0].reason: expected a non-empty string"),
    ('[[exceptions]]\nbucket = "a"\nreason = "r"\nowner = "o"\nexpires = 2026-01-01\n'
     'ownr = "x"\n', "p.toml:6: exceptions[0].ownr: unknown key"),
])
def test_mistakes_name_file_line_and_field(text: str, expected: str) -> None:
    """Each mistake is a ConfigError starting with file:line: field: and what is wrong."""
    assert error_of(text).startswith(expected), error_of(text)


def test_toml_syntax_errors_name_the_line() -> None:
    """A TOML syntax error is a ConfigError with tomllib's line and column."""
    message = error_of('[baseline]\nmax_stopped = "14d\n')
    assert message.startswith("p.toml: invalid TOML:")
    assert "line 2" in message


def test_key_lines_follows_tables_arrays_and_multiline_values() -> None:
    """The scanner places headers and keys, skipping multi-line arrays and strings."""
    lines = key_lines(GOOD.decode() + '[[exceptions]]\nreason = """\nx = 1\n"""\nowner = "o"\n')
    assert lines[("baseline",)] == 2
    assert lines[("baseline", "allowed_regions")] == 3
    assert lines[("baseline", "required_tags")] == 7
    assert lines[("exceptions", 0)] == 11
    assert lines[("exceptions", 1, "account")] == 23
    assert lines[("exceptions", 2, "owner")] == 28
    assert ("exceptions", 2, "x") not in lines


def test_load_policy_reads_files_and_names_unreadable_ones(tmp_path: Path) -> None:
    """load_policy names the path in errors; the config's policy key reaches Settings."""
    path = tmp_path / "policy.toml"
    path.write_bytes(GOOD)
    assert load_policy(path).source == str(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")
    assert load_configured(None) is None
    settings = load_settings({"NEXUS_AUDIT_POLICY": str(path)})
    policy = load_configured(settings.policy_file)
    assert policy is not None
    assert len(policy.exceptions) == 2
    (tmp_path / "bad.toml").write_text('[baseline]\ncolour = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml:2: baseline\.colour: unknown key"):
        load_policy(tmp_path / "bad.toml")
