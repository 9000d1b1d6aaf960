"""DuckDB's memory is bounded while a process commits, and spills to a directory of its
own (nexus_audit.history.spill): part of what keeps a million-instance crawl near 300 MB."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from structlog.testing import capture_logs

from nexus_audit.history import owned, spill
from nexus_audit.history.duckfile import DuckFiles
from nexus_audit.history.store import Store
from nexus_audit.history.verify import verify_history
from tests.test_store import T0, crawl, inst

BOUND = f"{spill.MEMORY_LIMIT_MIB}.0 MiB"


def _setting(files: DuckFiles, name: str) -> str:
    """A DuckDB setting of ``files``' hub as it prints (``128.0 MiB``)."""
    cursor = files.cursor()
    try:
        found = cursor.execute("SELECT current_setting($n)", {"n": name}).fetchone()
    finally:
        cursor.close()
    return str(found[0]) if found else ""


@pytest.fixture
def files() -> Iterator[DuckFiles]:
    """DuckDB files of their own (a hub of their own), closed after the test."""
    made = DuckFiles()
    yield made
    made.close()


def test_the_hub_spills_to_a_directory_of_this_process(files: DuckFiles) -> None:
    """DuckDB spills under the system's temporary directory, in a directory named after
    this process (never the working directory, DuckDB's default), locked by it while it
    lives and removed when the files are closed."""
    path = Path(_setting(files, "temp_directory"))
    assert path.parent == Path(tempfile.gettempdir())
    assert path.name.startswith(f"{spill.PREFIX}{os.getpid()}-")
    assert not owned.remove_if_abandoned(path)
    assert path.is_dir()
    files.close()
    assert not path.exists()


def test_memory_is_bounded_while_a_block_runs_and_only_then(files: DuckFiles) -> None:
    """Inside ``bounded`` (nested too: commits of two files) DuckDB's limit is
    MEMORY_LIMIT and it works on one thread; after the outermost block, and after one
    that failed, DuckDB's own defaults again (reads outside commits keep their memory
    and their threads)."""
    def settings() -> tuple[str, str]:
        return _setting(files, "memory_limit"), _setting(files, "threads")

    default = settings()
    assert default[0] != BOUND
    with files.memory.bounded():
        assert settings() == (BOUND, "1")
        with files.memory.bounded():
            assert settings() == (BOUND, "1")
        assert settings() == (BOUND, "1")
    assert settings() == default
    with pytest.raises(RuntimeError), files.memory.bounded():
        raise RuntimeError("a failed commit")
    assert settings() == default


@pytest.mark.parametrize(("remember", "expected"), [(1, [BOUND, BOUND]), (2, [])])
def test_a_large_commit_and_its_compaction_run_bounded(
        tmp_path: Path, files: DuckFiles, monkeypatch: pytest.MonkeyPatch,
        remember: int, expected: list[str]) -> None:
    """A commit of a fleet larger than the Store remembers (the comparison with the
    history, the seal's read-back) and the compaction before the file is let go each run
    with DuckDB's memory bounded; a fleet it remembers commits with DuckDB's defaults
    (its threads kept, for reads meanwhile too)."""
    limits: list[str] = []
    real = files.memory.bounded

    @contextlib.contextmanager
    def watched() -> Iterator[None]:
        with real():
            limits.append(_setting(files, "memory_limit"))
            yield

    monkeypatch.setattr(files.memory, "bounded", watched)
    store = Store(tmp_path / "history.duckdb", lock_timeout=5.0, files=files,
                  remember_rows=remember)
    store.migrate()
    crawl(store, T0, instances=[inst("i-1"), inst("i-2")])
    store.close()
    assert limits == expected


def test_a_commit_out_of_memory_is_committed_again_unbounded(
        tmp_path: Path, files: DuckFiles) -> None:
    """A commit (or compaction) that runs out of DuckDB's bounded memory is rolled back
    and run once more without the limit: the crawl is recorded once, whole, verifiable,
    with a warning, never refused for want of memory. (1 MiB: 100 instances overflow it.)"""
    files.memory = spill.MemoryLimit(files.cursor, limit="1MiB")
    store = Store(tmp_path / "history.duckdb", lock_timeout=5.0, files=files,
                  remember_rows=10)
    store.migrate()
    fleet = [inst(f"i-{n:03d}") for n in range(100)]
    with capture_logs() as logs:
        assert crawl(store, T0, instances=fleet) == 1
    store.close()
    events = [e["event"] for e in logs]
    assert events[0] == "store.commit_unbounded"  # the commit, run again unbounded
    # The compaction: run out of memory and run again, or (DuckDB holding more than
    # 1 MiB then, which varies from run to run) not bounded in the first place.
    assert events[1:] in (["store.commit_unbounded"], ["store.memory_unbounded"])
    assert "Out of Memory" in logs[0]["error"]
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM crawls").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM instance_versions "
                           "WHERE until_crawl IS NULL").fetchone() == (100,)
        assert verify_history(con).crawls == 1


def test_a_process_that_exits_leaves_no_spill_directory(tmp_path: Path) -> None:
    """A process that spilled and exits without closing its files (a CLI command) takes
    its spill directory, DuckDB's files in it, along at exit."""
    script = """
import duckdb
from nexus_audit.history.duckfile import process_files
cursor = process_files().cursor()
cursor.execute("SET memory_limit = '30MiB'")
cursor.execute("SET threads = 1")
cursor.execute("SET preserve_insertion_order = false")
cursor.execute("CREATE TEMP TABLE t AS SELECT range i, md5(range::varchar) s "
               "FROM range(1000000)")
print(cursor.execute("SELECT current_setting('temp_directory')").fetchone()[0])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    path = Path(done.stdout.strip())
    assert path.parent == tmp_path, done.stderr
    assert not path.exists()
    assert not done.stderr


_HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_spill_directories_of_processes_gone_are_removed_not_those_of_live_ones(
        tmp_path: Path) -> None:
    """A spill directory whose owner exited without removing it (killed) goes, with what it
    holds, when the next hub makes its own; one whose owner still holds its lock stays,
    even under a process id not running here (another PID namespace); other names stay."""
    left = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from nexus_audit.history import spill; "
         "print(spill.directory(Path(sys.argv[1])).path)", str(tmp_path)],
        capture_output=True, text=True, check=True)
    dead = Path(left.stdout.strip())
    (dead / "duckdb_temp_storage-0.tmp").write_bytes(b"x" * 1024)
    alien = tmp_path / f"{spill.PREFIX}999999999-0a1b2c3d"  # a pid not running here
    alien.mkdir()
    other = tmp_path / "unrelated-123"
    other.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(alien)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        holder.stdout.close()
        made = spill.directory(tmp_path)
        assert made is not None
        assert not dead.exists()
        assert alien.is_dir()
        assert other.is_dir()
        assert made.path.name.startswith(f"{spill.PREFIX}{os.getpid()}-")
        assert made.release()
        assert not made.path.exists()
    finally:
        holder.kill()
        holder.communicate(timeout=10)
    again = spill.directory(tmp_path)
    assert again is not None
    assert again.release()
    assert not alien.exists(), "its owner is gone now"


def test_without_a_writable_temporary_directory_a_large_commit_runs_unspilled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the spill directory cannot be made: a warning naming TMPDIR, DuckDB spills
    nowhere, and a commit bounded too tightly runs again unbounded: recorded, whole."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    files = DuckFiles()
    files.memory = spill.MemoryLimit(files.cursor, limit="1MiB")
    store = Store(tmp_path / "history.duckdb", lock_timeout=5.0, files=files,
                  remember_rows=10)
    try:
        with capture_logs() as logs:
            store.migrate()
            assert crawl(store, T0, instances=[inst(f"i-{n:03d}") for n in range(100)]) == 1
        assert _setting(files, "temp_directory") == ""
        with store.read() as con:
            assert verify_history(con).crawls == 1
    finally:
        files.close()
    events = [e["event"] for e in logs]
    assert events[0] == "store.no_spill_directory"
    assert "TMPDIR" in logs[0]["hint"]
    assert "store.commit_unbounded" in events


def test_a_staged_crawl_is_compressed(tmp_path: Path, files: DuckFiles) -> None:
    """Records staged in DuckDB go to a compressed in-memory database (a million instances
    take about 40 MB there instead of 180)."""
    store = Store(tmp_path / "history.duckdb", lock_timeout=5.0, files=files)
    store.migrate()
    staged = store.begin_crawl("acme", ["instances"], datetime(2025, 1, 1, tzinfo=T0.tzinfo))
    try:
        staged.add_instances([inst("i-1"), inst("i-2")])
        cursor = files.cursor()
        try:
            found = cursor.execute(
                "SELECT options FROM duckdb_databases() WHERE database_name = $d",
                {"d": staged.alias}).fetchone()
        finally:
            cursor.close()
    finally:
        staged.discard()
    assert found is not None
    assert found[0].get("compress") == "true"


def test_duckdb_accepts_the_limit_as_written() -> None:
    """MEMORY_LIMIT is a size DuckDB reads as MEMORY_LIMIT_MIB MiB."""
    con = duckdb.connect(":memory:", config={"memory_limit": spill.MEMORY_LIMIT})
    try:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone() == (BOUND,)
    finally:
        con.close()
