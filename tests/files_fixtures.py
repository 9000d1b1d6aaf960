"""A DuckFiles of the test's own (nexus_audit.history.duckfile): a fake clock that moves
only when the test says, and timers that go off only when the test fires them.

With the clock standing still, every commit after the first comes "at once" and is part
of a burst, so the file stays held until the test lets go, moves the clock and fires the
idle check, or closes the DuckFiles (after the test).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.history.duckfile import DuckFiles

REPO = Path(__file__).resolve().parents[1]

#: Another process attaching the file read-only with DuckDB alone; prints what happened.
OTHER_READER = textwrap.dedent("""
    import sys
    import duckdb
    try:
        duckdb.connect(sys.argv[1], read_only=True).close()
    except duckdb.Error as exc:
        print("refused:", exc)
    else:
        print("attached")
""")


def other_reader(path: Path) -> str:
    """What another process's read-only attach of ``path`` gets: attached or refused."""
    return subprocess.run([sys.executable, "-c", OTHER_READER, str(path)], cwd=REPO,
                          capture_output=True, text=True, check=True, timeout=60).stdout


@dataclass(eq=False)
class ManualTimer:
    """A timer that runs only when :meth:`ManualTimers.fire` says so."""

    after: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """Never run."""
        self.cancelled = True


class ManualTimers:
    """A ``start_timer`` for :class:`DuckFiles` that keeps the timers for the test."""

    def __init__(self) -> None:
        self.started: list[ManualTimer] = []

    def __call__(self, after: float, callback: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer(after, callback)
        self.started.append(timer)
        return timer

    @property
    def pending(self) -> list[ManualTimer]:
        """The timers started and neither fired nor cancelled."""
        return [t for t in self.started if not t.cancelled]

    def fire(self) -> int:
        """Run the pending timers now, in this thread (those they start wait for the next
        call); how many ran."""
        due = self.pending
        for timer in due:
            timer.cancelled = True  # a timer runs once
            timer.callback()
        return len(due)


@dataclass
class OwnFiles:
    """What the ``files`` fixture hands a test."""

    files: DuckFiles
    clock: FakeClock
    timers: ManualTimers


@pytest.fixture
def files() -> Iterator[OwnFiles]:
    """A DuckFiles on a fake clock and manual timers, closed after the test."""
    clock = FakeClock()
    timers = ManualTimers()
    made = DuckFiles(clock, start_timer=timers)
    yield OwnFiles(made, clock, timers)
    made.close()


def held_script(crawls: int) -> str:
    """The start of a script run in another process with the database path as its first
    argument: ``files``, a DuckFiles on a ``clock`` that stands still, and ``crawls``
    commits through ``store`` in one burst, so the file is held at the end."""
    return textwrap.dedent(f"""
        import sys
        from datetime import UTC, datetime, timedelta
        from nexus_audit.domain.model import CrawlSummary, Instance
        from nexus_audit.domain.timeutil import FakeClock
        from nexus_audit.history.duckfile import LINGER, DuckFiles
        from nexus_audit.history.store import Store

        clock = FakeClock()  # standing still: held from the second commit on
        files = DuckFiles(clock)
        store = Store(sys.argv[1], files=files)
        store.migrate()
        at = datetime(2026, 1, 1, tzinfo=UTC)
        for k in range({crawls}):
            staged = store.begin_crawl("acme", ["instances"], at + timedelta(hours=k))
            staged.add_instances([Instance("i-1", f"gen-{{k}}", "running", "eu-1", 2, 2.0,
                                           None, "{{}}", None, "{{}}")])
            store.commit(staged, CrawlSummary(
                account="acme", kinds=("instances",), started_at=at + timedelta(hours=k),
                finished_at=at + timedelta(hours=k), status="succeeded", instances=1))
        assert files.holding(store.path)
    """)
