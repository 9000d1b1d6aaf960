"""Pytest plugin: the CloudNexus simulator as fixtures (registered by tests/conftest.py).

- ``simulator``: a started in-process simulator with the default config.
- ``make_simulator(clock=None, **config)``: start more, each with its own config.
- ``sim_clock``: a ManualClock to pass as ``clock=`` so tests drive time without sleeping.
- ``sim_session``: an aiohttp session that sends the ``simulator`` fixture's key.
- ``simulator_thread``: a SimulatorThread for synchronous tests and subprocesses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from nexus_audit.simulator import (
    ManualClock,
    Simulator,
    SimulatorConfig,
    SimulatorThread,
)
from nexus_audit.simulator.clock import Clock

MakeSimulator = Callable[..., Awaitable[Simulator]]


@pytest.fixture
def sim_clock() -> ManualClock:
    """A manual clock starting at a fixed instant."""
    return ManualClock()


@pytest.fixture
async def make_simulator() -> AsyncIterator[MakeSimulator]:
    """Factory: ``await make_simulator(rate_limit=3, clock=clock)`` starts a simulator."""
    started: list[Simulator] = []

    async def factory(*, clock: Clock | None = None, **config: Any) -> Simulator:
        sim = Simulator(SimulatorConfig(**config), clock=clock)
        await sim.start()
        started.append(sim)
        return sim

    yield factory
    for sim in reversed(started):
        await sim.stop()


@pytest.fixture
async def simulator(make_simulator: MakeSimulator) -> Simulator:
    """A started simulator: 200 instances, 20 buckets, seed 1, no faults."""
    return await make_simulator()


@pytest.fixture
async def sim_session(simulator: Simulator) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session sending ``Authorization: Bearer <simulator.key>``."""
    async with aiohttp.ClientSession(headers=dict(simulator.auth_headers)) as session:
        yield session


@pytest.fixture
def simulator_thread() -> Iterator[SimulatorThread]:
    """A simulator serving from its own thread (default config)."""
    with SimulatorThread(SimulatorConfig()) as sim:
        yield sim
