"""Process faults: SIGKILL at random points, a full disk, a file that is not ours.

The store's own ten SIGKILLs mid-commit (tests/test_store_processes.py) kill a writer
that has committed at least once. These go further with the same writer and checker:
kills anywhere from process start (creating and migrating the file included), kills of
the real ``nexus-audit crawl`` against the simulator, a commit on a full file system (a
small tmpfs), and files that are not a nexus-audit database at all, which every command
must refuse without changing a byte.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
import structlog

from nexus_audit.cli import main
from nexus_audit.domain.model import CrawlSummary, Instance
from nexus_audit.errors import StoreError
from nexus_audit.history.store import Store
from nexus_audit.simulator import SimulatorConfig, SimulatorThread
from tests.ci import skip_or_fail
from tests.procio import LineReader
from tests.serve_fixtures import wait_until
from tests.test_store_processes import check_consistent, check_kill, kill_writer, start_writer

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def fingerprint(path: Path) -> tuple[str, int, int]:
    """SHA-256, size and modification time (ns) of a file."""
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data), path.stat().st_mtime_ns


def cli(args: list[str], env: dict[str, str], cwd: Path,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m nexus_audit ARGS``, captured."""
    return subprocess.run([sys.executable, "-m", "nexus_audit", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any NEXUS_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update(extra)
    return env


# -- SIGKILL --------------------------------------------------------------------------------

def test_sigkill_anywhere_from_process_start_keeps_exactly_the_committed_crawls(
        tmp_path: Path) -> None:
    """A writer killed at a random moment, twelve times: half the kills at any moment from
    its very start (creating and migrating the file, staging, committing), half after its
    first commit. The file always opens, history is exactly the crawls that committed
    (every one the writer reported, at most one more), none doubled, and writing resumes."""
    path = tmp_path / "killed-early.duckdb"
    rng = random.Random(7)
    committed = 0
    before_file = after_commit = 0
    for attempt in range(12):
        writer = start_writer(path, crawls=1000, n=2000)
        assert writer.stdout is not None
        lines = LineReader(writer.stdout, name="writer")
        printed: list[int] = []
        try:
            if attempt % 2:
                # After a commit: the writer reports it, then dies at a random point later.
                printed.append(int(lines.next_line(timeout=60, what="a first commit")))
                time.sleep(rng.uniform(0.0, 0.3))
            else:
                time.sleep(rng.uniform(0.05, 1.2))  # anywhere: start-up, migration, a commit
        finally:
            printed += kill_writer(writer, lines)
        assert writer.returncode == -signal.SIGKILL
        if not path.exists():
            assert not printed
            before_file += 1
            continue  # killed before it created the file: nothing to check yet
        store = Store(path)
        store.migrate()  # a file killed mid-migration must still upgrade cleanly
        count = check_kill(store, 2000, committed, printed)
        after_commit += bool(printed)
        committed = count
    # The floor: the kills after a commit really happened (the odd attempts, at least).
    assert after_commit >= 6
    assert before_file + after_commit <= 12
    writer = start_writer(path, crawls=1, n=2000)
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert check_consistent(Store(path), 2000) == committed + 1


def test_sigkill_of_the_crawl_command_never_leaves_a_partial_crawl(tmp_path: Path) -> None:
    """`nexus-audit crawl` killed at random points of a crawl (pages arriving, the commit):
    every crawl in the history is complete (the whole fleet, once) and the next crawl runs."""
    rng = random.Random(11)
    db = tmp_path / "crawl.duckdb"
    config = SimulatorConfig(instances=2500, buckets=40, seed=4, latency=0.02)
    with SimulatorThread(config) as sim:
        env = clean_env(NEXUS_API_URL=sim.url, NEXUS_API_KEY=sim.key, NEXUS_AUDIT_DB=str(db))
        fleet = {i.id for i in sim.fleet.query_instances()}
        for _ in range(6):
            sim.request_log.clear()
            proc = subprocess.Popen([sys.executable, "-m", "nexus_audit", "crawl"], env=env,
                                    cwd=tmp_path, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                # A random point of the crawl, counted in pages served; the extra random
                # delay after the later pages lands some kills in the commit.
                target = rng.randint(1, 26)
                wait_until(lambda: True if len(sim.request_log) >= target  # noqa: B023
                           or proc.poll() is not None else None,  # noqa: B023
                           timeout=30, what=f"{target} requests", interval=0.002)
                time.sleep(rng.uniform(0.0, 0.2))
                os.kill(proc.pid, signal.SIGKILL)
            finally:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
        done = cli(["crawl"], env, tmp_path)
        assert done.returncode == 0, done.stderr
    store = Store(db)
    with store.read() as con:
        crawls = con.execute("SELECT crawl_id, status, instances FROM crawls ORDER BY 1"
                             ).fetchall()
        per_crawl = con.execute(
            """SELECT c.crawl_id, count(v.id), count(DISTINCT v.id) FROM crawls c
               JOIN instance_versions v ON v.account = c.account
                   AND v.first_crawl <= c.crawl_id
                   AND (v.until_crawl IS NULL OR v.until_crawl > c.crawl_id)
               WHERE c.status = 'succeeded' GROUP BY 1 ORDER BY 1""").fetchall()
        current = {r[0] for r in con.execute(
            "SELECT id FROM instance_versions WHERE until_crawl IS NULL").fetchall()}
    assert [c[0] for c in crawls] == list(range(1, len(crawls) + 1))
    assert all(status == "succeeded" for _, status, _ in crawls)  # a kill records nothing
    assert [(c, n, n) for c, n, _ in per_crawl] == [(c, len(fleet), len(fleet))
                                                  for c, _, _ in crawls]
    assert current == fleet


# -- a full disk ----------------------------------------------------------------------------

@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "8m") -> Iterator[Path]:
    """A size-limited tmpfs mounted at ``where`` (unmounted after); skipped where mounting is
    impossible, except under CI (``tests.ci``), where that is a failure."""
    where.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                             str(where)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = f"cannot mount a small tmpfs ({result.stderr.strip() or 'not root?'})"
        skip_or_fail(message)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full; the filler's path."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def commit(store: Store, k: int, n: int) -> int:
    """Commit crawl ``k`` of ``n`` instances named for it."""
    at = T0 + timedelta(minutes=k)
    staged = store.begin_crawl("acme", ["instances"], at)
    padding = '{"pad": "' + "x" * 60 + '"}'  # bulk, so a few thousand rows fill the disk
    staged.add_instances([Instance(f"i-{i}", f"gen-{k}", "running", "eu-1", 2, 2.0, None,
                                   padding, None, "{}") for i in range(n)])
    return store.commit(staged, CrawlSummary(account="acme", kinds=("instances",),
                                             started_at=at, finished_at=at,
                                             status="succeeded", instances=n))


def test_disk_full_during_a_commit_is_a_clear_error_and_history_survives(
        tmp_path: Path) -> None:
    """On a full file system a commit fails with "the disk is full", the earlier history
    reads back intact (also from a new process), and once space is freed commits resume."""
    with small_filesystem(tmp_path / "small") as small:
        db = small / "audit.duckdb"
        store = Store(db)
        store.migrate()
        assert commit(store, 1, 500) == 1
        assert commit(store, 2, 500) == 2
        filler = fill(small)
        with pytest.raises(StoreError, match="the disk is full") as info:
            commit(store, 3, 20_000)
        assert "\n" not in str(info.value)
        assert check_consistent(store, 500) == 2  # in this process, after the failure
        report = cli(["report", "--since", "3650d", "--format", "json"],
                     clean_env(NEXUS_AUDIT_DB=str(db)), tmp_path)
        assert report.returncode == 0, report.stderr  # and from a fresh process
        assert '"succeeded": 2' in report.stdout
        filler.unlink()
        assert commit(store, 3, 500) == 3
        assert check_consistent(store, 500) == 3


def test_crawl_command_on_a_full_disk_exits_1_with_one_line(tmp_path: Path) -> None:
    """`nexus-audit crawl` whose commit hits a full disk exits 1, says so in one line, and
    the history keeps the earlier crawl."""
    with small_filesystem(tmp_path / "small") as small, \
            SimulatorThread(SimulatorConfig(instances=3000, buckets=10, seed=2)) as sim:
        db = small / "audit.duckdb"
        env = clean_env(NEXUS_API_URL=sim.url, NEXUS_API_KEY=sim.key, NEXUS_AUDIT_DB=str(db))
        first = cli(["crawl"], env, tmp_path)
        assert first.returncode == 0, first.stderr
        fill(small)
        for instance_id in sim.fleet.instance_ids()[:2000]:
            sim.fleet.rename_instance(instance_id, "renamed-" + "y" * 60)
        second = cli(["crawl"], env, tmp_path)
        assert second.returncode == 1
        errors = [line for line in second.stderr.splitlines()
                  if line.startswith("nexus-audit: error:")]
        assert len(errors) == 1, second.stderr
        assert "the disk is full" in errors[0]
        assert "Traceback" not in second.stderr
        with Store(db).read() as con:
            rows = con.execute("SELECT crawl_id, status FROM crawls").fetchall()
            names = con.execute("SELECT count(*) FROM instance_versions "
                                "WHERE name LIKE 'renamed-%'").fetchone()
        assert rows == [(1, "succeeded")]
        assert names == (0,)


# -- files that are not ours ----------------------------------------------------------------

def not_ours(kind: str, path: Path) -> None:
    """Write a file of ``kind`` at ``path``: something other than a usable nexus-audit DB."""
    if kind == "text":
        path.write_text("name,cost\nweb-1,12.5\n")
    elif kind == "random":
        path.write_bytes(random.Random(3).randbytes(300_000))
    elif kind == "sqlite":
        import sqlite3

        with contextlib.closing(sqlite3.connect(path)) as con:
            con.execute("CREATE TABLE crawls (id INTEGER)")
            con.commit()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign-duckdb":
        with contextlib.closing(duckdb.connect(str(path))) as con:
            con.execute("CREATE TABLE sales (id INTEGER)")
            con.execute("INSERT INTO sales VALUES (1), (2)")
    elif kind == "foreign-duckdb-with-meta":
        with contextlib.closing(duckdb.connect(str(path))) as con:
            con.execute("CREATE TABLE meta (key VARCHAR, value VARCHAR)")
            con.execute("CREATE TABLE sales (id INTEGER)")
    elif kind == "newer-schema":
        store = Store(path)
        store.migrate()
        commit(store, 1, 10)
        with contextlib.closing(duckdb.connect(str(path))) as con:
            con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["text", "random", "sqlite", "empty", "foreign-duckdb",
                                  "foreign-duckdb-with-meta", "newer-schema"])
def test_a_file_that_is_not_ours_is_refused_and_left_byte_for_byte(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """crawl, report, export and serve each refuse a database file that is not ours (not
    DuckDB, another program's DuckDB, a newer schema) with one clear line, and the file
    keeps every byte, its size and its modification time; nothing appears beside it."""
    home = tmp_path / "home"
    home.mkdir()
    db = home / "audit.duckdb"
    not_ours(kind, db)
    before = fingerprint(db)
    siblings = sorted(p.name for p in home.iterdir())
    for name in list(os.environ):
        if name.startswith("NEXUS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(db))
    monkeypatch.setenv("NEXUS_API_KEY", "nxk_test_not_ours")
    monkeypatch.setenv("NEXUS_API_URL", "http://127.0.0.1:9/v2")  # never reached
    monkeypatch.chdir(tmp_path)
    saved = structlog.get_config()
    for args in (["crawl"], ["report", "--since", "30d"],
                 ["export", "--to", str(tmp_path / "lake")],
                 ["serve", "--listen", "127.0.0.1:0"]):
        try:
            code = main(args)  # in-process: the real entry point, minus interpreter start-up
        finally:
            structlog.configure(**saved)
        out, err = capsys.readouterr()
        assert code in (1, 2), (args, err)
        errors = [line for line in err.splitlines() if line.startswith("nexus-audit: error:")]
        assert len(errors) == 1, (args, err)
        assert out == ""
        assert str(db) in errors[0] or kind == "empty", errors[0]
        assert fingerprint(db) == before, (args, kind)
        assert sorted(p.name for p in home.iterdir()) == siblings, (args, kind)
    assert not (tmp_path / "lake").exists()
    if kind == "newer-schema":
        assert "newer" in errors[0]
    elif kind != "empty":
        assert "not" in errors[0]
    shutil.rmtree(home)
