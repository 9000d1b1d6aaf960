"""Money is summed exactly: the same history gives the same amounts, to the last digit,
however DuckDB's threads split a large sum (a float sum of 600,000 prices did not)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from nexus_audit.history.store import Store
from tests.test_queries import T0, H, report
from tests.test_store import crawl, inst

#: Five of DuckDB's row groups (122,880 rows each): a sum over them is split between
#: threads, each taking a share that differs from run to run.
FLEET = 600_000


def test_cost_and_run_rate_are_the_same_every_time(tmp_path: Path) -> None:
    """Four reports of one large history agree on every amount, bit for bit; each total
    is the sum of its regions' exact amounts."""
    path = tmp_path / "h.duckdb"
    store = Store(path)
    store.migrate()
    first = crawl(store, T0, instances=[inst("i-seed")])
    crawl(store, T0 + H, instances=[inst("i-seed")])
    store.close()
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
