"""Money is summed exactly: the same history gives the same amounts, to the last digit,
however DuckDB's threads split a large sum (a float sum of 600,000 prices did not); an
amount past the decimals it is summed in is a named error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from nexus_audit.audit.report import build_report
from nexus_audit.domain.model import INT32_MAX, MAX_MEMORY_GB
from nexus_audit.domain.pricing import parse_pricing
from nexus_audit.domain.timeutil import Window
from nexus_audit.errors import CostOutOfRangeError
from nexus_audit.history.store import Store
from tests.test_queries import PRICES_TOML, T0, H, report
from tests.test_store import crawl, inst

#: Five of DuckDB's row groups (122,880 rows each): a sum over them is split between
#: threads, each taking a share that differs from run to run.
FLEET = 600_000


def seeded(path: Path) -> int:
    """A history at ``path`` of two crawls (0h, 1h) of one instance; the first crawl's id
    (rows written into the log straight after open at it)."""
    store = Store(path)
    store.migrate()
    first = crawl(store, T0, instances=[inst("i-seed")])
    crawl(store, T0 + H, instances=[inst("i-seed")])
    store.close()
    return first


def test_cost_and_run_rate_are_the_same_every_time(tmp_path: Path) -> None:
    """Four reports of one large history agree on every amount, bit for bit; each total
    is the sum of its regions' exact amounts."""
    path = tmp_path / "h.duckdb"
    first = seeded(path)
    # The fleet written straight into the log (the store's own commit of 600,000 records
    # takes seconds): running instances of many shapes, priced by the per-vCPU and
    # per-GB-hour rates (no plan), so the terms are floats of every kind.
    with duckdb.connect(str(path)) as con:
        con.execute(
            """INSERT INTO instance_log (account, id, name, status, region, cpu, memory_gb,
                   plan, tags, created_at, extra, first_crawl, until_crawl, removed)
               SELECT 'acme', 'i-' || i, 'n', 'running', 'eu-' || (i % 3), 1 + i % 13,
                      0.1 + (i % 1009) * 0.0137, NULL, '{}', NULL, '{}', $first, NULL, FALSE
               FROM range($n) t(i)""", {"first": first, "n": FLEET})
    amounts = set()
    for _ in range(4):
        cost = report(Store(path), T0, T0 + 3 * H).cost
        amounts.add((tuple(sorted(cost.accrued.by_region.items())),
                     tuple(sorted(cost.run_rate_hourly.by_region.items()))))
    assert len(amounts) == 1
    (accrued, rate), = amounts
    # 1 h of the seed's and the fleet's running time is covered (crawls 0h and 1h; max_gap
    # 2 h holds the 1h crawl until 3h): the accrued total is 3 h at the run-rate
    assert sum(a for _, a in accrued) == pytest.approx(3 * sum(r for _, r in rate), rel=1e-12)


def test_an_amount_past_the_decimals_is_a_named_error(tmp_path: Path) -> None:
    """A history holding a size no price can multiply into 38 digits (memory_gb 1e300,
    recorded before records were bounded) fails the report with CostOutOfRangeError, one
    line naming the cost: not a StoreError quoting DuckDB's cast of a 300-digit number."""
    path = tmp_path / "h.duckdb"
    first = seeded(path)
    with duckdb.connect(str(path)) as con:
        con.execute(
            """INSERT INTO instance_log (account, id, name, status, region, cpu, memory_gb,
                   plan, tags, created_at, extra, first_crawl, until_crawl, removed)
               VALUES ('acme', 'i-huge', 'n', 'running', 'eu-1', 2, 1e300, NULL, '{}', NULL,
                       '{}', $first, NULL, FALSE)""", {"first": first})
    with pytest.raises(CostOutOfRangeError) as caught:
        report(Store(path), T0, T0 + 3 * H)
    assert str(caught.value).startswith("cost: ")
    assert "\n" not in str(caught.value)


def test_the_largest_instance_at_the_highest_price_is_summed(tmp_path: Path) -> None:
    """The largest instance a record may describe at the highest price a list may give
    (4.3e18 an hour) is priced, and its daily series too: no bounded input takes a sum
    past DECIMAL(38,12) (the series once multiplied the rate by microseconds as a
    decimal, past 38 digits)."""
    store = Store(tmp_path / "h.duckdb")
    store.migrate()
    big = inst("i-big", cpu=INT32_MAX, memory_gb=float(MAX_MEMORY_GB), plan=None)
    crawl(store, T0, instances=[big])
    crawl(store, T0 + H, instances=[big])
    pricing = parse_pricing(PRICES_TOML.replace(b"per_vcpu_hour = 0.5", b"per_vcpu_hour = 1e9")
                            .replace(b"per_gb_hour = 0.25", b"per_gb_hour = 1e9"), "p.toml")
    window = Window(T0 - H, T0 + 2 * H)
    kwargs: dict[str, Any] = dict(stale_after=7 * H, pending_stale_after=H,
                                  max_gap_instances=2 * H, max_gap_buckets=2 * H,
                                  pricing=pricing, now=T0 + 2 * H)
    plain = build_report(store, window, **kwargs)
    assert plain.cost.run_rate_hourly.total == pytest.approx(INT32_MAX * 2e9, rel=1e-9)
    charted = build_report(store, window, series=True, **kwargs)
    assert charted.series is not None
    assert sum(day.compute for day in charted.series.cost) == (
        pytest.approx(plain.cost.accrued.compute, rel=1e-9))
