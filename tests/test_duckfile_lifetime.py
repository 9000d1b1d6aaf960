"""Who reaches a DuckDB file, and for how long (nexus_audit.history.duckfile.DuckFiles):
one DuckFiles per file per process, its close(), and what a forked child may not use."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import StoreError
from nexus_audit.history.duckfile import DuckFiles, process_files
from nexus_audit.history.store import Store
from tests.files_fixtures import (
    OTHER_READER,
    ManualTimers,
    OwnFiles,
    held_script,
    other_reader,
)
from tests.test_store import T0, crawl, inst

REPO = Path(__file__).resolve().parents[1]
HOUR = timedelta(hours=1)

def held_store(path: Path, files: DuckFiles) -> Store:
    """A migrated store at ``path`` with two crawls committed in a burst (held, when the
    clock of ``files`` stands still)."""
    store = Store(path, lock_timeout=5.0, files=files)
    store.migrate()
    for k in range(2):
        crawl(store, T0 + k * HOUR, instances=[inst("i-1", name=f"gen-{k}")])
    return store


def test_stores_given_no_files_share_the_process_one(tmp_path: Path) -> None:
    """A Store made without a DuckFiles (a library caller's) uses the process's own."""
    assert Store(tmp_path / "a.duckdb").files is process_files()
    assert Store(tmp_path / "b.duckdb").files is process_files()


def test_a_second_duckfiles_is_refused_a_file_the_first_uses(tmp_path: Path,
                                                            files: OwnFiles) -> None:
    """Two DuckFiles of one process on one file would both get DuckDB's lock: the second
    is refused before it opens the file (the first keeps its lock: another process is
    still refused), and may use the file once the first is closed."""
    store = held_store(tmp_path / "history.duckdb", files.files)
    assert files.files.holding(store.path)
    second = DuckFiles(FakeClock(), start_timer=ManualTimers())
    try:
        with pytest.raises(StoreError, match="another DuckFiles of this process"):
            Store(store.path, files=second).latest()
        assert "refused" in other_reader(store.path)
        files.files.close()
        assert not files.files.holding(store.path)
        assert [s.instances[0].name for s in Store(store.path, files=second).latest()] == [
            "gen-1"]
    finally:
        second.close()


def test_close_lets_go_of_every_file_and_ends_the_object(tmp_path: Path,
                                                        files: OwnFiles) -> None:
    """close() settles, checkpoints and detaches every held file (no log left, another
    process gets in), deletes the copies, and refuses any later use."""
    one = held_store(tmp_path / "one.duckdb", files.files)
    two = held_store(tmp_path / "two.duckdb", files.files)
    with two.read(copy=True) as con:  # lets go of two, and copies it
        assert con.execute("SELECT count(*) FROM crawls").fetchone() == (2,)
    crawl(two, T0 + 2 * HOUR, instances=[inst("i-1")])
    crawl(two, T0 + 3 * HOUR, instances=[inst("i-1")])
    assert files.files.holding(one.path)
    assert files.files.holding(two.path)
    assert list(tmp_path.glob(".two.duckdb.copies-*"))
    files.files.close()
    for store in (one, two):
        assert not files.files.holding(store.path)
        assert not Path(f"{store.path}.wal").exists()
        assert other_reader(store.path).startswith("attached")
    assert not list(tmp_path.glob(".two.duckdb.copies-*"))
    with pytest.raises(StoreError, match="closed"):
        one.latest()
    files.files.close()  # again: nothing happens
    assert len(Store(two.path).latest()) == 1  # the process's own may use it now


FORK = held_script(2) + textwrap.dedent("""
    import os
    import subprocess
    from nexus_audit.errors import StoreError
    from nexus_audit.history.duckfile import process_files

    parents = process_files()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        lines = []
        try:
            store.latest()
            lines.append("child read")
        except StoreError as exc:
            lines.append(f"child refused: {exc}")
        lines.append("child default: " + ("new" if process_files() is not parents else "same"))
        os.write(write, "\\n".join(lines).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        print(pipe.read())
    os.waitpid(child, 0)
    print("parent holds:", files.holding(store.path))
    print("other process:", subprocess.run([sys.executable, "-c", sys.argv[2], sys.argv[1]],
                                           capture_output=True, text=True).stdout.strip())
""")


def test_a_forked_child_leaves_its_parents_files_alone(tmp_path: Path) -> None:
    """A child forked while its parent holds a file has the parent's DuckFiles in memory
    but not its lock: it refuses to read through it, its process_files() is its own, and
    the parent still holds the file (locked to other processes) and exits leaving it
    whole."""
    path = tmp_path / "fork.duckdb"
    done = subprocess.run([sys.executable, "-c", FORK, str(path), OTHER_READER], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("child refused: these database files belong to process")
    assert lines[1:3] == ["child default: new", "parent holds: True"]
    assert lines[3].startswith("other process: refused")
    assert not Path(f"{path}.wal").exists()
    with Store(path).read() as con:
        assert con.execute("SELECT count(*) FROM crawls").fetchone() == (2,)


#: Another process reading a copy of the database until its standard input closes.
COPY_READER = textwrap.dedent("""
    import sys
    from nexus_audit.history.store import Store
    with Store(sys.argv[1]).read(copy=True) as con:
        con.execute("SELECT count(*) FROM crawls").fetchall()
        print("reading", flush=True)
        sys.stdin.read()
""")


def copy_reader(path: Path) -> subprocess.Popen[str]:
    """A process holding a copy of ``path`` open, once it said so."""
    proc = subprocess.Popen([sys.executable, "-c", COPY_READER, str(path)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "reading\n"
    return proc


def test_copies_of_a_killed_process_are_removed_by_the_next(tmp_path: Path,
                                                            files: OwnFiles) -> None:
    """A process killed while it read a copy leaves its copies directory; the next process
    making a copy removes it, and leaves a living process's directory alone."""
    store = Store(tmp_path / "db.duckdb", files=files.files)
    store.migrate()
    crawl(store, T0, instances=[inst("i-1")])
    files.files.release_all()
    killed, living = copy_reader(store.path), copy_reader(store.path)
    try:
        killed.kill()  # SIGKILL: no exit hook runs
        killed.wait(60)
        dirs = sorted(tmp_path.glob(".db.duckdb.copies-*"))
        assert len(dirs) == 2
        with store.read(copy=True):
            left = set(tmp_path.glob(".db.duckdb.copies-*"))
        assert len(left) == 2  # the living reader's and this process's own
        assert len(left & set(dirs)) == 1
        assert not list(tmp_path.glob(".db.duckdb.new-copies-*"))
    finally:
        for proc in (killed, living):
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=60)  # reaps it and closes its pipes
