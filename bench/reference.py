"""The host's speed now: a fixed pure-Python workload (dicts of random strings, a sort),
timed in CPU seconds. On this project's 2-core machine it runs 11 to 14 times a
CPU-second when the host is at its usual speed and 8 to 9 in its slow phases, when every
benchmark's CPU figures rise alike: printed beside a benchmark's figures, it tells a
slower host from slower code.
"""

from __future__ import annotations

import random
import time


def reference_runs(runs: int = 3) -> tuple[float, float]:
    """The workload ``runs`` times: (runs per CPU-second, wall seconds taken)."""
    started = time.process_time()
    wall = time.perf_counter()
    rng = random.Random(1)
    for _ in range(runs):
        table = {f"inst_{rng.getrandbits(40):010x}": i for i in range(100_000)}
        sorted(table)
    cpu = time.process_time() - started
    return runs / cpu, time.perf_counter() - wall


def reference_figure() -> float:
    """Run the workload three times, print the figure, and return it (runs per CPU-second)."""
    started = time.process_time()
    rate, wall = reference_runs(3)
    cpu = time.process_time() - started
    print(f"  reference workload: {rate:.2f} runs per CPU-second "
          f"({wall:.2f}s wall for {cpu:.2f}s CPU)")
    return rate
