"""Price lists: plan / cpu / memory → hourly price, and storage per GB-month.

CloudNexus publishes no prices, so they come from a TOML file: the shipped default
(``nexus_audit/data/pricing.toml``, example list prices) or one named in the config.
Every report carries the list's name, as-of date and sha256 digest, so a number can be
traced back to the exact prices that produced it.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Final

from nexus_audit.domain.files import read_bounded
from nexus_audit.domain.model import INT32_MAX, MAX_MEMORY_GB
from nexus_audit.errors import ConfigError

#: Storage prices are per GB-month; a month is this many hours, a GB 10^9 bytes (decimal,
#: as the API and memory_gb use). The SQL queries get both as bound values
#: (:meth:`Pricing.query_values`), never as literals of their own.
HOURS_PER_MONTH: Final = 730.0
BYTES_PER_GB: Final = 1_000_000_000
DEFAULT_SOURCE: Final = "nexus_audit/data/pricing.toml (example list prices)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """One instance plan: its size and hourly price."""

    name: str
    cpu: int
    memory_gb: float
    hourly: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Pricing:
    """A validated price list."""

    name: str
    as_of: str
    currency: str
    plans: tuple[Plan, ...]
    per_vcpu_hour: float
    per_gb_hour: float
    storage_gb_month: float
    #: sha256 of the file's bytes.
    digest: str
    source: str

    def instance_hourly(self, plan: str | None, cpu: int, memory_gb: float) -> float:
        """Hourly price: the plan's, else a plan with the same cpu and memory, else rates."""
        for candidate in self.plans:
            if plan is not None and candidate.name == plan:
                return candidate.hourly
        matches = [p.hourly for p in self.plans
                   if p.cpu == cpu and p.memory_gb == memory_gb]
        if matches:
            return min(matches)
        return cpu * self.per_vcpu_hour + memory_gb * self.per_gb_hour

    def storage_hourly(self, size_bytes: int) -> float:
        """Hourly price of storing ``size_bytes``."""
        return size_bytes / BYTES_PER_GB * self.storage_gb_month / HOURS_PER_MONTH

    def query_values(self) -> dict[str, float]:
        """The prices and units the queries bind (``$per_vcpu_hour``, ``$bytes_per_gb``...):
        the rates of :meth:`instance_hourly` and :meth:`storage_hourly`, in their terms."""
        return {"per_vcpu_hour": self.per_vcpu_hour, "per_gb_hour": self.per_gb_hour,
                "storage_gb_month": self.storage_gb_month,
                "bytes_per_gb": float(BYTES_PER_GB), "hours_per_month": HOURS_PER_MONTH}

    def reference(self) -> dict[str, str]:
        """What a report quotes: ``{name, as_of, digest}``."""
        return {"name": self.name, "as_of": self.as_of, "digest": self.digest}


#: The largest price a list may give (per hour, per vCPU-hour, per GB-hour or per
#: GB-month): a billion, room for any currency's real prices (a large instance is a few
#: million dong an hour). Amounts are summed as DECIMAL(38,12), at most 10^26: a price of
#: 1e300 made every report fail on a conversion error instead of refusing the file.
MAX_PRICE: Final = 1e9


def _number(data: dict[str, Any], key: str, where: str, *, integral: bool = False,
            maximum: float = MAX_PRICE) -> float:
    value = data.get(key)
    kind = "a non-negative whole number" if integral else "a non-negative number"
    kind += f" up to {maximum:,.0f}"
    if not isinstance(value, (int, float)) or isinstance(value, bool) or (
            integral and not isinstance(value, int)):
        raise ConfigError(f"{where}: '{key}' must be {kind}, got {value!r:.40}")
    if not math.isfinite(value) or value < 0 or value > maximum:
        raise ConfigError(f"{where}: '{key}' must be {kind}, got {value!r:.40}")
    return float(value)


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if isinstance(value, date):
        return value.isoformat()
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value.strip()


_TOP: Final = frozenset({"name", "as_of", "currency", "per_vcpu_hour", "per_gb_hour",
                         "storage_gb_month", "plans"})
_PLAN: Final = frozenset({"cpu", "memory_gb", "hourly"})


def parse_pricing(raw: bytes, source: str) -> Pricing:
    """Validate a price list's bytes; every mistake is a :class:`ConfigError` naming it."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: not a valid TOML price list: {exc}") from None
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(_TOP))})")
    as_of = _text(data, "as_of", source)
    try:
        date.fromisoformat(as_of)
    except ValueError:
        raise ConfigError(f"{source}: 'as_of' must be a date like 2026-01-01, "
                          f"got {as_of!r}") from None
    currency = _text(data, "currency", source)
    if not (len(currency) == 3 and currency.isalpha() and currency.isupper()):
        raise ConfigError(f"{source}: 'currency' must be an ISO 4217 code like USD, "
                          f"got {currency!r}")
    tables = data.get("plans")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{source}: needs at least one [plans.NAME] table")
    plans = []
    for plan_name, table in sorted(tables.items()):
        where = f"{source}: plans.{plan_name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table with cpu, memory_gb and hourly")
        extra = sorted(set(table) - _PLAN)
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}")
        # A plan's size is held to a record's bounds (cpu is an INTEGER where the
        # queries match it): a larger one matches no instance and failed every report.
        plans.append(Plan(name=plan_name,
                          cpu=int(_number(table, "cpu", where, integral=True,
                                          maximum=INT32_MAX)),
                          memory_gb=_number(table, "memory_gb", where, maximum=MAX_MEMORY_GB),
                          hourly=_number(table, "hourly", where)))
    return Pricing(
        name=_text(data, "name", source), as_of=as_of, currency=currency, plans=tuple(plans),
        per_vcpu_hour=_number(data, "per_vcpu_hour", source),
        per_gb_hour=_number(data, "per_gb_hour", source),
        storage_gb_month=_number(data, "storage_gb_month", source),
        digest=hashlib.sha256(raw).hexdigest(), source=source)


def load_pricing(path: Path | None = None) -> Pricing:
    """Load the price list at ``path``, or the shipped example list when ``None``."""
    if path is None:
        raw = resources.files("nexus_audit").joinpath("data/pricing.toml").read_bytes()
        return parse_pricing(raw, DEFAULT_SOURCE)
    try:
        raw = read_bounded(path)
    except OSError as exc:
        raise ConfigError(f"pricing: cannot read {path}: {exc.strerror or exc}") from None
    return parse_pricing(raw, str(path))
