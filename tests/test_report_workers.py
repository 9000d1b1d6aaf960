"""Report workers: reports computed in processes of their own over a database copy, and
cancelled there (their DuckDB query interrupted)."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import FakeClock, Window
from nexus_audit.errors import NoDataError, StoreError
from nexus_audit.history import cancel as cancel_mod
from nexus_audit.history.duckfile import process_files
from nexus_audit.history.store import Store
from nexus_audit.service import workers as workers_mod
from nexus_audit.service.reports import StoreReports
from nexus_audit.service.runtime import Service
from nexus_audit.service.web import ReportQuery
from nexus_audit.service.workers import ReportWorkers
from tests.test_store import T0, bucket, crawl, inst

HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def workers() -> Iterator[ReportWorkers]:
    """A pool of report workers shared by this module's tests (starting one takes a
    second), stopped after them."""
    pool = ReportWorkers()
    yield pool
    pool.close()
    process_files().copies.drop()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Two hourly crawls of account ``acme``."""
    s = Store(tmp_path / "history.duckdb", lock_timeout=5.0)
    s.migrate()
    crawl(s, T0, instances=[inst("i-1")], buckets=[bucket("b-1")])
    crawl(s, T0 + HOUR, instances=[inst("i-1"), inst("i-2")], buckets=[bucket("b-1")])
    s.close()
    return s


def pid(copy: str) -> bytes:
    """A job: the worker's process id."""
    return str(os.getpid()).encode()


def slow_query(copy: str, started: str) -> bytes:
    """A job: a query over the copy that takes minutes unless interrupted; touches
    ``started`` first."""
    with Store(copy).read() as con:
        Path(started).touch()
        try:
            con.execute("SELECT sum(a * b) FROM range(1000000) t(a), range(1000000) u(b), "
                        "crawls").fetchall()
        except duckdb.Error as exc:
            raise StoreError(f"cannot read {copy}: {exc}") from None
    return b"finished"


def test_a_worker_report_equals_the_one_made_in_process(store: Store,
                                                        workers: ReportWorkers) -> None:
    """The same query gives the same report JSON from a worker process as in process;
    an unknown account is a NoDataError from both."""
    settings = Settings(accounts=(AccountConfig(name="acme", api_key=Secret("k")),),
                        db_path=store.path)
    clock = FakeClock(T0 + 2 * HOUR)
    query = ReportQuery(window=Window(T0 - HOUR, T0 + 2 * HOUR))
    here = StoreReports(store, settings, load_pricing(None), clock)
    there = StoreReports(store, settings, load_pricing(None), clock, workers=workers)
    made = there.report(query)
    assert isinstance(made, bytes)
    assert json.loads(made) == json.loads(json.dumps(here.report(query)))
    assert json.loads(made)["inventory"]["instances"]["total"] == 2
    with pytest.raises(NoDataError):
        there.report(ReportQuery(window=query.window, account="nobody"))


def test_the_report_json_escapes_what_the_cli_escapes(tmp_path: Path,
                                                     workers: ReportWorkers) -> None:
    """GET /report's JSON writes DEL and U+2028 from the API as escapes (as the CLI's JSON
    does; ``json.dumps`` escapes every character outside printable ASCII): the same value,
    nothing raw for a line-based or terminal reader."""
    s = Store(tmp_path / "history.duckdb", lock_timeout=5.0)
    s.migrate()
    crawl(s, T0, instances=[inst("i-1")])
    crawl(s, T0 + HOUR, instances=[inst("i-1"), inst("i-\x7f\u2028")])
    s.close()
    settings = Settings(accounts=(AccountConfig(name="acme", api_key=Secret("k")),),
                        db_path=s.path)
    query = ReportQuery(window=Window(T0 - HOUR, T0 + 2 * HOUR))
    made = StoreReports(s, settings, load_pricing(None), FakeClock(T0 + 2 * HOUR),
                        workers=workers).report(query)
    assert isinstance(made, bytes)
    assert b"\x7f" not in made
    assert "\u2028".encode() not in made
    assert b"i-\\u007f\\u2028" in made
    assert [d["id"] for d in json.loads(made)["drift"]] == ["i-\x7f\u2028"]


def test_a_cancelled_job_is_interrupted_in_its_worker(store: Store, workers: ReportWorkers,
                                                       tmp_path: Path) -> None:
    """Cancelling a running job interrupts its DuckDB query in the worker (a StoreError
    comes back at once instead of minutes later) and the worker serves the next job."""
    started = tmp_path / "started"
    cancel = cancel_mod.Cancel()
    outcome: list[BaseException | bytes] = []
    first_pid = workers.run(pid, ("",), cancel_mod.Cancel())

    def run() -> None:
        try:
            with store.copy_for_reading() as copy:
                outcome.append(workers.run(slow_query, (str(copy), str(started)), cancel))
        except BaseException as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    wait_for_file(started)
    cancel.cancel()
    runner.join(60)  # a bound for failure only: it returns as soon as the query stops
    assert not runner.is_alive(), "the worker's query was not interrupted"
    assert len(outcome) == 1
    assert isinstance(outcome[0], StoreError), outcome
    assert "nterrupt" in str(outcome[0])
    assert workers.run(pid, ("",), cancel_mod.Cancel()) == first_pid  # the same worker, reused


def wait_for_file(path: Path) -> None:
    """Block until another process creates ``path`` (at most a minute)."""
    event = threading.Event()
    for _ in range(1200):
        if path.exists():
            return
        event.wait(0.05)
    raise AssertionError(f"{path} never appeared")


def test_the_rebuild_reads_stale_instances_through_a_worker_alike(
        tmp_path: Path, workers: ReportWorkers) -> None:
    """The snapshot rebuild's stale candidates are the same from a worker process as in
    process (the instances not running, counted by the start of their streak)."""
    db = tmp_path / "history.duckdb"
    s = Store(db, lock_timeout=5.0)
    s.migrate()
    crawl(s, T0, instances=[inst("i-1", status="stopped"), inst("i-2")])
    crawl(s, T0 + HOUR, instances=[inst("i-1", status="stopped"), inst("i-2", status="pending")])
    s.close()
    settings = Settings(accounts=(AccountConfig(name="acme", api_key=Secret("k")),), db_path=db)
    clock = FakeClock(T0 + 2 * HOUR)
    here = Service(settings, Store(db), load_pricing(None), clock=clock, grace=1)
    there = Service(settings, Store(db), load_pricing(None), clock=clock, grace=1,
                    workers=workers)
    states = here.store.latest()
    expected = here.stale_candidates(states)
    assert sorted((x.status, x.since, x.number) for x in expected) == [
        ("pending", T0 + HOUR, 1), ("stopped", T0, 1)]
    try:
        assert there.stale_candidates(states) == expected
    finally:
        assert there.rebuild_worker is not None
        there.rebuild_worker.close()


def test_a_worker_signalled_during_its_start_up_lives_on() -> None:
    """A Ctrl-C, hangup or stop (SIGTERM) to serve's process group while a worker is still
    starting (its imports take a second) does not end it: held back from the spawn until
    it ignores them, then dropped; the worker answers its first job."""
    worker = workers_mod._Worker(0)
    try:
        # At once: the child is still starting Python when these arrive.
        os.kill(worker.process.pid, signal.SIGINT)
        os.kill(worker.process.pid, signal.SIGHUP)
        os.kill(worker.process.pid, signal.SIGTERM)
        worker.conn.send(("job", os.getpid, ()))
        assert worker.conn.poll(30), "the worker answered no job"
        status, pid = worker.conn.recv()
        assert status == "ok"
        assert pid == worker.process.pid
        assert worker.process.is_alive()
    finally:
        worker.kill()
    # The spawning thread's own mask is as it was.
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & workers_mod.HELD_SIGNALS


def _open_the_hub() -> bytes:
    """A job that makes the worker's DuckDB hub (and so its spill directory)."""
    process_files().cursor().close()
    return str(os.getpid()).encode()


def test_closing_lets_idle_workers_exit_and_clean_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing the workers (serve stopping) ends an idle worker through its pipe, not a
    kill: it exits 0 and takes its DuckDB spill directory along."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the spawned worker's temporary dir
    pool = ReportWorkers(niceness=0)
    try:
        pid = int(pool.run(_open_the_hub, (), cancel_mod.Cancel()))
        assert list(tmp_path.glob(f"nexus-audit-spill-{pid}-*"))
        (worker,) = pool._all  # the one worker (private: which process, not behaviour)
    finally:
        pool.close()
    assert worker.process.exitcode == 0
    assert not list(tmp_path.glob("nexus-audit-spill-*"))
