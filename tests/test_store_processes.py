"""The store across real processes: readers while a writer commits; SIGKILL mid-commit."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nexus_audit.domain.model import CrawlSummary, Instance
from nexus_audit.history.store import Store
from tests.procio import LineReader

REPO = Path(__file__).resolve().parents[1]

# A writer: each crawl renames all N instances to generation k, so a reader that saw a
# half-applied crawl would see two generations at once. Prints each committed crawl id.
WRITER = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime, timedelta
    from nexus_audit.domain.model import CrawlSummary, Instance
    from nexus_audit.history.store import Store

    path, crawls, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = Store(path, lock_timeout=60)
    store.migrate()
    base = datetime.now(UTC) - timedelta(days=1)
    with store.read() as con:
        start = con.execute("SELECT count(*) FROM crawls").fetchone()[0]
    for k in range(start + 1, start + 1 + crawls):
        at = base + timedelta(seconds=k)
        staged = store.begin_crawl("acme", ["instances"], at)
        staged.add_instances([Instance(f"i-{i}", f"gen-{k}", "running", "eu-1", 2, 2.0,
                                       "micro", "{}", None, "{}") for i in range(n)])
        crawl_id = store.commit(staged, CrawlSummary(
            account="acme", kinds=("instances",), started_at=at, finished_at=at,
            status="succeeded", instances=n))
        print(crawl_id, flush=True)
""")


def start_writer(path: Path, crawls: int, n: int) -> subprocess.Popen[str]:
    """Start the writer process."""
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(crawls), str(n)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def kill_writer(writer: subprocess.Popen[str], printed: LineReader[str]) -> list[int]:
    """SIGKILL the writer (by pid) if it still runs, reap it, and return every crawl id it
    printed, i.e. every crawl whose commit had returned before the kill."""
    if writer.poll() is None:
        os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    lines = printed.rest(timeout=30)
    for stream in (writer.stdout, writer.stderr):
        if stream is not None:
            stream.close()
    return [int(line) for line in lines]


def check_kill(store: Store, n: int, committed: int, printed: list[int]) -> int:
    """After a kill: history is consistent and holds exactly the crawls committed before
    it, i.e. every crawl the writer printed (a returned commit is durable) and at most the
    one whose commit the kill interrupted. Returns the new count."""
    count = check_consistent(store, n)
    assert count >= max([committed, *printed])
    assert count <= max([committed, *printed]) + 1
    return count


def check_consistent(store: Store, n: int) -> int:
    """History is exactly the committed crawls: one generation current, nothing doubled."""
    with store.read() as con:
        crawls = [r[0] for r in con.execute("SELECT crawl_id FROM crawls ORDER BY 1").fetchall()]
        assert crawls == list(range(1, len(crawls) + 1))
        if not crawls:
            return 0
        current = con.execute(
            "SELECT count(*), count(DISTINCT id), min(name), max(name), min(first_crawl) "
            "FROM instance_versions WHERE until_crawl IS NULL").fetchone()
        assert current == (n, n, f"gen-{crawls[-1]}", f"gen-{crawls[-1]}", crawls[-1])
        per_crawl = con.execute(
            "SELECT first_crawl, count(*) FROM instance_versions GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert per_crawl == [(c, n) for c in crawls]
        return len(crawls)


def test_reports_while_a_writer_commits(tmp_path: Path) -> None:
    """A writer commits in a loop while another process runs `report` and this one reads:
    every read succeeds and never sees a half-applied crawl."""
    path = tmp_path / "shared.duckdb"
    Store(path).migrate()
    writer = start_writer(path, crawls=40, n=500)
    env = {**os.environ, "NEXUS_AUDIT_DB": str(path)}
    for name in ("NEXUS_API_KEY", "NEXUS_API_KEY_FILE", "NEXUS_AUDIT_CONFIG"):
        env.pop(name, None)
    store = Store(path, lock_timeout=30)
    reports = reads = 0
    try:
        while writer.poll() is None or reports < 2:
            result = subprocess.run(
                [sys.executable, "-m", "nexus_audit", "report", "--since", "3d",
                 "--format", "json"], cwd=REPO, env=env, capture_output=True, text=True,
                timeout=60, check=False)
            if "history is empty" not in result.stderr:
                assert result.returncode == 0, result.stderr
                data = json.loads(result.stdout)
                assert data["inventory"]["instances"]["total"] == 500
                assert data["drift"] == [] or {d["field"] for d in data["drift"]} == {"name"}
                reports += 1
            for _ in range(5):
                check_consistent(store, 500)
                reads += 1
    finally:
        if writer.poll() is None:
            writer.kill()
        out, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err
    assert out.split()[-1] == "40"
    assert check_consistent(store, 500) == 40
    assert reports >= 2
    assert reads >= 10


def test_sigkill_mid_commit_leaves_committed_history(tmp_path: Path) -> None:
    """SIGKILL at random points of a commit loop, ten times: the file reopens, history is
    exactly the committed crawls (every one the writer reported, none half-applied, none
    doubled), and writing resumes."""
    path = tmp_path / "killed.duckdb"
    rng = random.Random(4)
    committed = 0
    for _ in range(10):
        writer = start_writer(path, crawls=1000, n=3000)
        assert writer.stdout is not None
        lines = LineReader(writer.stdout, name="writer")
        try:
            # wait until the writer has committed at least once, then kill at a random point
            first = int(lines.next_line(timeout=60, what="the writer's first commit"))
            time.sleep(rng.uniform(0.0, 0.3))  # a random point in the commit loop
        finally:
            rest = kill_writer(writer, lines)
        assert writer.returncode == -signal.SIGKILL
        printed = [first, *rest]
        assert printed[0] == committed + 1
        count = check_kill(Store(path), 3000, committed, printed)
        assert count > committed
        committed = count
    store = Store(path)
    store.migrate()
    writer = start_writer(path, crawls=1, n=3000)
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert check_consistent(store, 3000) == committed + 1


READERS = 2


def test_same_process_reads_and_commit_serialize(tmp_path: Path) -> None:
    """Within one process, threads reading while another commits all succeed and see whole
    generations: each reader reads between every two commits (it sees all 20), and reads
    really overlap commits (begun before a commit ended, ended after it began: counted)."""
    path = tmp_path / "threads.duckdb"
    store = Store(path)
    store.migrate()
    errors: list[BaseException] = []
    done = threading.Event()
    changed = threading.Condition()
    ticks = itertools.count()  # one order for every read's and commit's start and end
    # (reader, tick at start, tick at end, generation seen)
    reads: list[tuple[int, int, int, int]] = []
    commits: list[tuple[int, int]] = []

    def tick() -> int:
        with changed:
            return next(ticks)

    def read_loop(reader: int) -> None:
        try:
            while not done.is_set():
                began = tick()
                states = store.latest()
                ended = tick()
                names = {i.name for s in states for i in s.instances}
                seen = {s.last_crawl["instances"].crawl_id for s in states} or {0}
                assert len(seen) == 1, seen
                (generation,) = seen
                # One whole generation: the 100 instances of one commit, never a mix.
                assert names == ({f"gen-{generation}"} if generation else set()), names
                assert sum(len(s.instances) for s in states) == (100 if generation else 0)
                with changed:
                    reads.append((reader, began, ended, generation))
                    changed.notify_all()
        except BaseException as exc:  # collected and re-raised by the test
            errors.append(exc)
            with changed:
                changed.notify_all()

    def read_since(moment: int) -> bool:
        """Each reader has finished a read begun after ``moment`` (or one failed)."""
        return bool(errors) or all(any(r == reader and began > moment
                                       for r, began, _, _ in reads)
                                   for reader in range(READERS))

    threads = [threading.Thread(target=read_loop, args=(r,)) for r in range(READERS)]
    for thread in threads:
        thread.start()
    try:
        base = datetime(2026, 1, 1, tzinfo=UTC)
        last_end = -1
        for k in range(1, 21):
            with changed:
                assert changed.wait_for(lambda: read_since(last_end),  # noqa: B023
                                        timeout=30), "the readers stopped reading"
            at = base + timedelta(minutes=k)
            staged = store.begin_crawl("acme", ["instances"], at)
            staged.add_instances([Instance(f"i-{i}", f"gen-{k}", "running", "eu-1", 2, 2.0,
                                           None, "{}", None, "{}") for i in range(100)])
            began = tick()
            store.commit(staged, CrawlSummary(account="acme", kinds=("instances",),
                                              started_at=at, finished_at=at,
                                              status="succeeded"))
            last_end = tick()
            commits.append((began, last_end))
        with changed:
            assert changed.wait_for(lambda: read_since(last_end), timeout=30)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == []
    assert check_consistent(store, 100) == 20
    for reader in range(READERS):  # a read between every two commits: every generation
        assert {g for r, _, _, g in reads if r == reader} >= set(range(1, 21))
    overlapping = [read for read in reads
                   if any(read[1] < c_end and read[2] > c_begin for c_begin, c_end in commits)]
    assert len(overlapping) >= 1, f"no read overlapped any of {len(commits)} commits"
