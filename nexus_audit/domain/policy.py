"""The compliance policy: baselines, accepted exceptions, and the rules they switch on.

A TOML file named by ``NEXUS_AUDIT_POLICY`` (or ``policy = "..."`` in the config file);
``nexus_audit/data/policy.example.toml`` is a commented example::

    [baseline]
    allowed_regions = ["eu-1", "us-1"]      # instance.region
    required_tags = ["team", "env"]         # instance.required_tags
    max_stopped = "14d"                     # instance.stopped_too_long
    max_public_bucket_size = "10GB"         # bucket.public_too_large (or integer bytes)

    [[exceptions]]                          # a bucket allowed to be public
    bucket = "site-*"                       # an id or an fnmatch pattern
    reason = "static website"
    owner = "web-team@example.com"
    expires = 2026-12-31                    # a date: holds through that day (UTC)

``bucket.public`` is always on; each baseline key switches on its rule. Every mistake is
a :class:`ConfigError` naming the file, the line and the field (``policy.toml:12:
exceptions[1].expires: ...``): tomllib reports no positions for values, so
:func:`key_lines` finds each key's line in the text itself.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final, Literal

from nexus_audit.domain.files import read_bounded
from nexus_audit.domain.timeutil import isoformat, parse_duration
from nexus_audit.errors import ConfigError, UsageError

Severity = Literal["critical", "high", "medium", "low"]
SEVERITIES: Final[tuple[Severity, ...]] = ("critical", "high", "medium", "low")


@dataclass(frozen=True, slots=True)
class Rule:
    """One compliance rule: its id, the kind of resource it judges, its fixed severity."""

    id: str
    kind: Literal["instance", "bucket"]
    severity: Severity
    title: str


#: Every rule, with its severity (fixed per rule; an expired exception raises it one step).
RULES: Final[Mapping[str, Rule]] = {r.id: r for r in (
    Rule("bucket.public", "bucket", "high", "Bucket is publicly accessible"),
    Rule("bucket.public_too_large", "bucket", "critical",
         "Public bucket is larger than the policy allows"),
    Rule("instance.region", "instance", "medium", "Instance runs outside the allowed regions"),
    Rule("instance.required_tags", "instance", "low", "Instance lacks required tags"),
    Rule("instance.stopped_too_long", "instance", "low",
         "Instance has been stopped longer than the policy allows"),
)}
BUCKET_RULES: Final = tuple(r.id for r in RULES.values() if r.kind == "bucket")


def raised(severity: Severity) -> Severity:
    """One step worse (``critical`` stays ``critical``): the severity of an expired exception."""
    return SEVERITIES[max(0, SEVERITIES.index(severity) - 1)]


# re.ASCII: \d only 0-9 (not other scripts' digits) and case folding only of ASCII letters
# (the Kelvin sign "K" would match "k" and then miss the unit table).
_SIZE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|PB)", re.IGNORECASE | re.ASCII)
_SIZE_UNITS: Final = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                      "PB": 10**15}


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like ``"10GB"`` (decimal units: 1 GB = 10^9 B)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"expected a size of 0 bytes or more, got {value}")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    raise ValueError(f"expected integer bytes or a size like \"10GB\" (B, KB, MB, GB, TB, PB; "
                     f"1 GB = 10^9 bytes), got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Waiver:
    """A bucket (id or fnmatch pattern) accepted as breaking ``rules`` until ``expires``."""

    pattern: str
    reason: str
    owner: str
    #: The instant the acceptance lapses (a date means the end of that day, UTC).
    expires: datetime
    #: ``expires`` as written in the file (``2026-12-31``).
    expires_text: str
    rules: tuple[str, ...] = ("bucket.public",)
    account: str | None = None
    line: int | None = None

    def covers(self, account: str, rule: str, resource: str) -> bool:
        """Whether this exception is about ``resource`` of ``account`` under ``rule``."""
        if rule not in self.rules or (self.account is not None and self.account != account):
            return False
        return resource == self.pattern or fnmatch.fnmatchcase(resource, self.pattern)

    def to_json_dict(self) -> dict[str, Any]:
        """The exception as the report shows it."""
        return {"pattern": self.pattern, "owner": self.owner, "reason": self.reason,
                "expires": isoformat(self.expires)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Baseline:
    """What a compliant fleet looks like; ``None`` switches the rule off."""

    allowed_regions: tuple[str, ...] | None = None
    required_tags: tuple[str, ...] | None = None
    max_stopped: timedelta | None = None
    max_public_bucket_bytes: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """A validated policy file."""

    baseline: Baseline = Baseline()
    exceptions: tuple[Waiver, ...] = ()
    source: str = "policy"
    #: sha256 of the file's bytes, so a report can name the exact policy it judged by.
    digest: str = ""

    @property
    def rules(self) -> tuple[str, ...]:
        """The ids of the rules this policy switches on."""
        b = self.baseline
        on = {"bucket.public": True,
              "bucket.public_too_large": b.max_public_bucket_bytes is not None,
              "instance.region": b.allowed_regions is not None,
              "instance.required_tags": b.required_tags is not None,
              "instance.stopped_too_long": b.max_stopped is not None}
        return tuple(rule for rule in RULES if on[rule])

    def exception_for(self, account: str, rule: str, resource: str) -> Waiver | None:
        """The exception covering a resource: of those that match, the one lasting longest."""
        matching = [e for e in self.exceptions if e.covers(account, rule, resource)]
        return max(matching, key=lambda e: e.expires) if matching else None


# -- locating keys in the text ---------------------------------------------------------------

_HEADER: Final = re.compile(r"\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY: Final = re.compile(r"\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)"
                         r"(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+))*)\s*=")

Path_ = tuple[str | int, ...]


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip().strip("\"'") for p in re.findall(
        r"\"[^\"]*\"|'[^']*'|[^.]+", dotted))


def _depth_change(line: str) -> int:
    """Brackets and braces opened minus closed outside strings and comments."""
    depth = 0
    quote = ""
    for ch in line:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return depth


def key_lines(text: str) -> dict[Path_, int]:
    """The 1-based line of every table header and key: ``("exceptions", 1, "expires")``.

    A small scanner for the subset of TOML a policy uses (tables, arrays of tables,
    keys, multi-line arrays); anything it cannot place simply has no line.
    """
    lines: dict[Path_, int] = {}
    table: Path_ = ()
    counts: dict[tuple[str, ...], int] = {}
    depth = 0
    in_multiline = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if in_multiline in line:
                in_multiline = ""
            continue
        if depth > 0:
            depth += _depth_change(line)
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            name = _parts(header.group(2))
            if header.group(1) == "[[":
                index = counts.get(name, -1) + 1
                counts[name] = index
                table = (*name, index)
            else:
                table = name
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            lines.setdefault((*table, *_parts(key.group(1))), number)
            value = line[key.end():]
            for fence in ('"""', "'''"):
                if value.count(fence) == 1:
                    in_multiline = fence
            depth = max(0, _depth_change(value))
    return lines


# -- validation ------------------------------------------------------------------------------

_TOP_KEYS: Final = frozenset({"baseline", "exceptions"})
_BASELINE_KEYS: Final = frozenset({"allowed_regions", "required_tags", "max_stopped",
                                   "max_public_bucket_size"})
_EXCEPTION_KEYS: Final = frozenset({"bucket", "reason", "owner", "expires", "rules", "account"})
_EXCEPTION_REQUIRED: Final = ("bucket", "reason", "owner", "expires")


class _Checker:
    """Builds errors that name the file, the line and the field."""

    def __init__(self, source: str, lines: Mapping[Path_, int]) -> None:
        self.source = source
        self.lines = lines

    def error(self, path: Path_, message: str) -> ConfigError:
        """A ConfigError at ``path`` (the nearest enclosing key or table with a line)."""
        line = None
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                break
        where = f"{self.source}:{line}" if line is not None else self.source
        field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p)
                        for i, p in enumerate(path))
        return ConfigError(f"{where}: {field}: {message}" if field else f"{where}: {message}",
                           parameter="policy")

    def keys(self, table: Mapping[str, Any], allowed: frozenset[str], path: Path_) -> None:
        """Refuse keys this version does not know, naming the first one."""
        for key in table:
            if key not in allowed:
                raise self.error((*path, key), f"unknown key (known: {', '.join(sorted(allowed))})")

    def text(self, value: Any, path: Path_) -> str:
        """A non-empty string."""
        if not isinstance(value, str) or not value.strip():
            raise self.error(path, f"expected a non-empty string, got {value!r}")
        return value.strip()

    def strings(self, value: Any, path: Path_) -> tuple[str, ...]:
        """A non-empty array of distinct non-empty strings."""
        if not isinstance(value, list) or not value:
            raise self.error(path, "expected a non-empty array of strings "
                             "(remove the key to switch the rule off)")
        items = tuple(self.text(v, (*path, i)) for i, v in enumerate(value))
        if len(set(items)) != len(items):
            raise self.error(path, f"lists a value twice: {list(items)}")
        return items

    def expiry(self, value: Any, path: Path_) -> tuple[datetime, str]:
        """A TOML date (the end of that day, UTC) or date-time (naive means UTC)."""
        moment: datetime | None = None
        if isinstance(value, str):
            try:
                value = (date.fromisoformat(value.strip()) if len(value.strip()) == 10
                         else datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
            except ValueError:
                raise self.error(path, f"expected a date like 2026-12-31, got {value!r}"
                                 ) from None
        if isinstance(value, datetime):
            moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            return moment.astimezone(UTC), isoformat(moment) or ""
        if isinstance(value, date):
            end = datetime.combine(value + timedelta(days=1), time(0), tzinfo=UTC)
            return end, value.isoformat()
        raise self.error(path, f"expected a date like 2026-12-31, got {value!r}")


def parse_policy(data: bytes, source: str = "policy") -> Policy:
    """Validate a policy file's bytes; ``ConfigError`` naming file, line and field."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not a UTF-8 text file", parameter="policy") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}", parameter="policy") from None
    check = _Checker(source, key_lines(text))
    check.keys(raw, _TOP_KEYS, ())

    base_raw = raw.get("baseline", {})
    if not isinstance(base_raw, dict):
        raise check.error(("baseline",), "expected a table ([baseline])")
    check.keys(base_raw, _BASELINE_KEYS, ("baseline",))
    regions = tags = None
    max_stopped = None
    max_bytes = None
    if "allowed_regions" in base_raw:
        regions = check.strings(base_raw["allowed_regions"], ("baseline", "allowed_regions"))
    if "required_tags" in base_raw:
        tags = check.strings(base_raw["required_tags"], ("baseline", "required_tags"))
    if "max_stopped" in base_raw:
        value = base_raw["max_stopped"]
        path: Path_ = ("baseline", "max_stopped")
        if not isinstance(value, str):
            raise check.error(path, f"expected a duration like \"14d\", got {value!r}")
        try:
            max_stopped = parse_duration(value, parameter="max_stopped")
        except UsageError as exc:
            raise check.error(path, str(exc).removeprefix("max_stopped: ")) from None
    if "max_public_bucket_size" in base_raw:
        try:
            max_bytes = parse_size(base_raw["max_public_bucket_size"])
        except ValueError as exc:
            raise check.error(("baseline", "max_public_bucket_size"), str(exc)) from None

    tables = raw.get("exceptions", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise check.error(("exceptions",), "expected an array of tables ([[exceptions]])")
    exceptions = []
    for index, table in enumerate(tables):
        at: Path_ = ("exceptions", index)
        check.keys(table, _EXCEPTION_KEYS, at)
        for key in _EXCEPTION_REQUIRED:
            if key not in table:
                raise check.error((*at, key), "missing (every exception needs bucket, reason, "
                                  "owner and expires)")
        rules: tuple[str, ...] = ("bucket.public",)
        if "rules" in table:
            rules = check.strings(table["rules"], (*at, "rules"))
            for i, rule in enumerate(rules):
                if rule not in BUCKET_RULES:
                    raise check.error((*at, "rules", i),
                                      f"{rule!r} is not a bucket rule ({', '.join(BUCKET_RULES)})")
        expires, expires_text = check.expiry(table["expires"], (*at, "expires"))
        exceptions.append(Waiver(
            pattern=check.text(table["bucket"], (*at, "bucket")),
            reason=check.text(table["reason"], (*at, "reason")),
            owner=check.text(table["owner"], (*at, "owner")),
            expires=expires, expires_text=expires_text, rules=rules,
            account=check.text(table["account"], (*at, "account")) if "account" in table
            else None,
            line=check.lines.get(at)))
    return Policy(
        baseline=Baseline(allowed_regions=regions, required_tags=tags, max_stopped=max_stopped,
                          max_public_bucket_bytes=max_bytes),
        exceptions=tuple(exceptions), source=source,
        digest="sha256:" + hashlib.sha256(data).hexdigest())


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file at ``path``."""
    try:
        data = read_bounded(path)
    except OSError as exc:
        raise ConfigError(f"NEXUS_AUDIT_POLICY: cannot read {path}: {exc.strerror or exc}",
                          parameter="policy") from None
    return parse_policy(data, str(path))


def load_configured(path: Path | None) -> Policy | None:
    """The policy named in the settings, or ``None`` when none is configured."""
    return None if path is None else load_policy(path)
