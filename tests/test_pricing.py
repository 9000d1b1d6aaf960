"""Price lists: the shipped example, overrides, validation, and the hourly arithmetic."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import pytest

from nexus_audit.domain.pricing import load_pricing, parse_pricing
from nexus_audit.errors import ConfigError

GOOD = """
name = "acme-contract"
as_of = 2026-02-01
currency = "EUR"
per_vcpu_hour = 0.5
per_gb_hour = 0.25
storage_gb_month = 7.3
[plans.micro]
cpu = 2
memory_gb = 2
hourly = 1.0
[plans.micro-b]
cpu = 2
memory_gb = 2
hourly = 0.8
"""


def test_shipped_default_is_marked_and_complete() -> None:
    """The default list is marked as example prices and prices the four plans."""
    pricing = load_pricing()
    raw = resources.files("nexus_audit").joinpath("data/pricing.toml").read_bytes()
    assert b"EXAMPLE LIST PRICES" in raw
    assert pricing.digest == hashlib.sha256(raw).hexdigest()
    assert {(p.name, p.cpu, p.memory_gb) for p in pricing.plans} == {
        ("nano", 1, 1.0), ("micro", 2, 2.0), ("standard", 4, 16.0), ("performance", 16, 64.0)}
    assert pricing.reference() == {"name": "example-list-prices", "as_of": "2026-01-01",
                                   "digest": pricing.digest}


def test_override_file(tmp_path: Path) -> None:
    """A file named in config replaces the default; TOML dates are accepted for as_of."""
    path = tmp_path / "prices.toml"
    path.write_text(GOOD)
    pricing = load_pricing(path)
    assert (pricing.name, pricing.as_of, pricing.currency) == ("acme-contract", "2026-02-01",
                                                               "EUR")
    assert pricing.digest == hashlib.sha256(GOOD.encode()).hexdigest()


def test_hourly_price_fallbacks() -> None:
    """Plan by name, else the cheapest plan of the same size, else per-vCPU/GB rates."""
    pricing = parse_pricing(GOOD.encode(), "t")
    assert pricing.instance_hourly("micro", 9, 9.0) == 1.0
    assert pricing.instance_hourly(None, 2, 2.0) == 0.8
    assert pricing.instance_hourly("gone", 2, 2.0) == 0.8
    assert pricing.instance_hourly(None, 3, 4.0) == 3 * 0.5 + 4 * 0.25
    assert pricing.storage_hourly(10**9) == pytest.approx(7.3 / 730)


@pytest.mark.parametrize(("change", "message"), [
    (("currency = \"EUR\"", "currency = \"euro\""), "ISO 4217"),
    (("as_of = 2026-02-01", "as_of = \"last week\""), "as_of"),
    (("hourly = 1.0", "hourly = -1.0"), "hourly"),
    (("cpu = 2\nmemory_gb = 2\nhourly = 1.0", "cpu = 2.5\nmemory_gb = 2\nhourly = 1.0"),
     "whole number"),
    (("per_gb_hour = 0.25", "per_gb_hour = 0.25\ndiscount = 3"), "unknown key"),
    (("name = \"acme-contract\"", "name = \"\""), "'name'"),
    (("[plans.micro]", "[plans.micro]\ncolour = \"red\""), "unknown key"),
    (("[plans.micro]", "[plans.micro"), "not a valid TOML"),
    # Past what a report sums (DECIMAL(38,12)) or a record holds (cpu is an INTEGER).
    (("hourly = 1.0", "hourly = 1_000_000_001.0"), "up to 1,000,000,000"),
    (("storage_gb_month = 7.3", "storage_gb_month = 1e40"), "storage_gb_month"),
    (("cpu = 2\nmemory_gb = 2\nhourly = 1.0", "cpu = 2147483648\nmemory_gb = 2\nhourly = 1.0"),
     "'cpu'"),
    (("cpu = 2\nmemory_gb = 2\nhourly = 1.0", "cpu = 2\nmemory_gb = 1e300\nhourly = 1.0"),
     "memory_gb"),
])
def test_invalid_lists_are_config_errors(change: tuple[str, str], message: str) -> None:
    """Every mistake is a ConfigError naming the file and the setting."""
    with pytest.raises(ConfigError, match=message) as info:
        parse_pricing(GOOD.replace(*change).encode(), "prices.toml")
    assert "prices.toml" in str(info.value)


def test_no_plans_and_unreadable_file(tmp_path: Path) -> None:
    """A list without plans, or a file that cannot be read, is a ConfigError."""
    without = "\n".join(line for line in GOOD.splitlines() if "plans" not in line
                        and not line.startswith(("cpu", "memory_gb", "hourly")))
    with pytest.raises(ConfigError, match="at least one"):
        parse_pricing(without.encode(), "p.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_pricing(tmp_path / "missing.toml")
