"""A faithful CloudNexus v2 API simulator: seeded fleet, signed cursors, rate limits, faults.

In-process::

    async with start_simulator(SimulatorConfig(instances=50, seed=3)) as sim:
        ...  # sim.url, sim.key, sim.fleet, sim.faults, sim.request_log

From synchronous code: ``with SimulatorThread(config) as sim: ...``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clock import Clock, ManualClock, SystemClock
    from .config import SimulatorConfig, generate_key
    from .errors import ErrorCode
    from .faults import FaultKind, ScriptedFault
    from .fleet import PLAN_SHAPES, REGIONS, Bucket, Fleet, Instance
    from .requestlog import RequestRecord
    from .runner import Simulator, SimulatorThread, start_simulator

# Where each public name lives. Imported when first asked for (PEP 562), so that
# ``nexus-audit report`` building its parser (which names ``simulate``'s flags, from
# ``.config``) does not import aiohttp and the whole simulator: a quarter of a second.
_HOMES: dict[str, str] = {
    "Clock": ".clock",
    "ManualClock": ".clock",
    "SystemClock": ".clock",
    "SimulatorConfig": ".config",
    "generate_key": ".config",
    "ErrorCode": ".errors",
    "FaultKind": ".faults",
    "ScriptedFault": ".faults",
    "PLAN_SHAPES": ".fleet",
    "REGIONS": ".fleet",
    "Bucket": ".fleet",
    "Fleet": ".fleet",
    "Instance": ".fleet",
    "RequestRecord": ".requestlog",
    "Simulator": ".runner",
    "SimulatorThread": ".runner",
    "start_simulator": ".runner",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # PEP 562's other half: without it dir(), help() and completion missed every name
    # not yet resolved.
    return sorted(set(globals()) | set(_HOMES))


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
