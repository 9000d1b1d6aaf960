"""A faithful CloudNexus v2 API simulator: seeded fleet, signed cursors, rate limits, faults.

In-process::

    async with start_simulator(SimulatorConfig(instances=50, seed=3)) as sim:
        ...  # sim.url, sim.key, sim.fleet, sim.faults, sim.request_log

From synchronous code: ``with SimulatorThread(config) as sim: ...``.
"""

from .clock import Clock, ManualClock, SystemClock
from .config import SimulatorConfig, generate_key
from .errors import ErrorCode
from .faults import FaultKind, ScriptedFault
from .fleet import PLAN_SHAPES, REGIONS, Bucket, Fleet, Instance
from .requestlog import RequestRecord
from .runner import Simulator, SimulatorThread, start_simulator

__all__ = [
    "PLAN_SHAPES",
    "REGIONS",
    "Bucket",
    "Clock",
    "ErrorCode",
    "FaultKind",
    "Fleet",
    "Instance",
    "ManualClock",
    "RequestRecord",
    "ScriptedFault",
    "Simulator",
    "SimulatorConfig",
    "SimulatorThread",
    "SystemClock",
    "generate_key",
    "start_simulator",
]
