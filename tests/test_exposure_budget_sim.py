"""Bucket polls keep their cadence while an instance crawl pages, against the simulator."""

from __future__ import annotations

import asyncio
import itertools
from bisect import bisect_right
from datetime import timedelta
from pathlib import Path

import aiohttp

from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.timeutil import SystemClock
from nexus_audit.history.store import Store
from nexus_audit.service.runtime import Service
from tests.sim_fixtures import MakeSimulator
from tests.test_queries import PRICES

WINDOW = 2.0  # the budget's window, shortened; 600/min is 20 requests per window
PER_MINUTE = 600
INTERVAL = 1.0  # bucket polls every second


def most_in_window(times: list[float], window: float) -> int:
    """The most requests inside any half-open window ``[t, t + window)``."""
    ordered = sorted(times)
    return max((bisect_right(ordered, t + window - 1e-9) - i for i, t in enumerate(ordered)),
               default=0)


async def test_bucket_polls_keep_their_interval_while_instances_page(
        make_simulator: MakeSimulator, tmp_path: Path) -> None:
    """While a budget-bound instance crawl pages, the simulator sees a bucket poll about
    every interval, and no sliding window holds more requests than the budget."""
    sim = await make_simulator(instances=5000, buckets=30)
    account = AccountConfig(name="sim", api_url=sim.url, api_key=Secret(sim.key),
                            rate_budget=PER_MINUTE)
    settings = Settings(accounts=(account,), db_path=tmp_path / "h.duckdb",
                        interval=timedelta(hours=1), bucket_interval=timedelta(seconds=INTERVAL))
    store = Store(settings.db_path)
    store.migrate()
    service = Service(settings, store, PRICES, clock=SystemClock(), grace=0.0,
                      budget_window=WINDOW)
    async with aiohttp.ClientSession() as session, service.crawling(session):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while not any(k[:2] == ("sim", "instances") and n
                      for k, n in service.crawl_stats.counts().items()):
            assert loop.time() < deadline, "the instance crawl did not finish in 30 s"
            await asyncio.sleep(0.05)
    log = sim.request_log.records()
    instance_times = [r.time for r in log if r.path == "/v2/instances"]
    bucket_times = [r.time for r in log if r.path == "/v2/buckets"]
    capacity = PER_MINUTE * WINDOW / 60
    # Budget-bound for several polls, by count rather than by a measured span: more than
    # twice a window's capacity of instance requests cannot fit in fewer than three
    # windows, as long as the budget holds (asserted below on every request).
    assert len(instance_times) > 2 * capacity, len(instance_times)
    first, last = min(instance_times), max(instance_times)
    assert last - first >= 2 * WINDOW
    during = [t for t in bucket_times if first <= t <= last]
    assert len(during) >= (last - first) / INTERVAL - 1
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert max(gaps) < 1.6 * INTERVAL, gaps
    assert most_in_window([r.time for r in log], WINDOW) <= capacity
