"""Property: cost accrual and coverage equal a brute-force minute-by-minute sum on random
small histories of instances and buckets, with crawls and windows at any minute."""

from __future__ import annotations

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nexus_audit.domain.model import Bucket, Instance, Kind
from nexus_audit.errors import NoDataError
from nexus_audit.history.store import Store
from tests.test_queries import PRICES, T0, report
from tests.test_store import bucket, crawl, inst

M = timedelta(minutes=1)
IDS = ("i-1", "i-2", "i-3")
BUCKET_IDS = ("b-1", "b-2")
Snap = tuple[str, str, int, str]  # id, status, plan index, region
BucketSnap = tuple[str, int, str]  # id, size in units of 10^8 bytes, access
PLANS = (("micro", 2, 2.0), (None, 4, 16.0), (None, 1, 3.0))  # 1.00, 2.00, 1.25 per hour
#: Which kinds a crawl covers (buckets are often polled alone).
COVERS: dict[str, tuple[Kind, ...]] = {"both": ("instances", "buckets"),
                                       "instances": ("instances",), "buckets": ("buckets",)}

snapshot = st.lists(
    st.tuples(st.sampled_from(IDS), st.sampled_from(("running", "running", "stopped", "pending")),
              st.sampled_from(range(len(PLANS))), st.sampled_from(("eu-1", "us-1"))),
    min_size=1, max_size=3, unique_by=lambda t: t[0])
buckets = st.lists(
    st.tuples(st.sampled_from(BUCKET_IDS), st.integers(min_value=0, max_value=40),
              st.sampled_from(("private", "public-read"))),
    min_size=1, max_size=2, unique_by=lambda t: t[0])
# (minutes after the previous crawl, failed, kinds covered, instances, buckets)
history = st.lists(
    st.tuples(st.integers(min_value=1, max_value=300), st.sampled_from((False, False, True)),
              st.sampled_from(tuple(COVERS)), snapshot, buckets),
    min_size=2, max_size=8)

Crawl = tuple[int, bool, tuple[Kind, ...], list[Instance], list[Bucket]]


def holding(crawls: list[Crawl], kind: Kind, max_gap: int, minute: int) -> Crawl | None:
    """The successful crawl of ``kind`` whose observation holds at ``minute``, if any."""
    good = [c for c in crawls if not c[1] and kind in c[2]]
    for index, c in enumerate(good):
        t_next = good[index + 1][0] if index + 1 < len(good) else None
        end = min(c[0] + max_gap, t_next if t_next is not None else 10**9)
        if c[0] <= minute < end:
            return c
    return None


def brute_force(crawls: list[Crawl], max_gap: int, since: int,
                until: int) -> tuple[float, float, float]:
    """Compute and storage cost and covered seconds (summed over the kinds crawled before
    ``until``), charged minute by minute from what the observation holding then shows."""
    compute = storage = covered = 0.0
    for minute in range(since, until):
        held = holding(crawls, "instances", max_gap, minute)
        for record in held[3] if held else ():
            if record.status == "running":
                compute += PRICES.instance_hourly(record.plan, record.cpu,
                                                  record.memory_gb) / 60
        covered += 60.0 if held else 0.0
        held = holding(crawls, "buckets", max_gap, minute)
        for b in held[4] if held else ():
            storage += PRICES.storage_hourly(b.size_bytes) / 60
        covered += 60.0 if held else 0.0
    return compute, storage, covered


def write(store: Store, history: list[tuple[int, bool, str, list[Snap], list[BucketSnap]]],
          ) -> list[Crawl]:
    """Commit the crawls of ``history`` (minutes apart, as drawn); the crawls as written."""
    crawls: list[Crawl] = []
    t = 0
    for step, failed, covers, snap, sizes in history:
        t += step
        kinds = COVERS[covers]
        records = [inst(i, status=s, plan=PLANS[p][0], cpu=PLANS[p][1],
                        memory_gb=PLANS[p][2], region=r) for i, s, p, r in snap]
        found = [bucket(b, size=n * 10**8, access=a) for b, n, a in sizes]
        crawl(store, T0 + t * M, failed=failed,
              instances=records if "instances" in kinds else None,
              buckets=found if "buckets" in kinds else None)
        crawls.append((t, failed, kinds, records, found))
    return crawls


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty database, copied for each example (migrating takes longer than
    the example's own crawls)."""
    path = tmp_path_factory.mktemp("template") / "empty.duckdb"
    store = Store(path)
    store.migrate()
    store.close()
    return path


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(history=history, max_gap=st.integers(min_value=30, max_value=240),
       anchor=st.integers(min_value=0, max_value=7), before=st.integers(min_value=-30,
                                                                         max_value=400),
       length=st.integers(min_value=1, max_value=1800))
def test_accrual_matches_brute_force(history: list[tuple[int, bool, str, list[Snap],
                                                         list[BucketSnap]]],
                                     max_gap: int, anchor: int, before: int, length: int,
                                     empty_db: Path) -> None:
    """SQL accrual of compute and storage over versions and cumulative coverage equals the
    minute-by-minute sum, part hours included; a window without a crawl is NoDataError."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(empty_db, Path(tmp) / "h.duckdb")
        store = Store(Path(tmp) / "h.duckdb")
        crawls = write(store, history)
        # The window starts ``before`` minutes before one of the crawls (after it when
        # negative), so most windows hold a crawl and some hold none.
        since = max(0, crawls[anchor % len(crawls)][0] - before)
        until = since + length
        if not any(since <= c[0] < until for c in crawls):
            with pytest.raises(NoDataError, match="no crawls between"):
                report(store, T0 + since * M, T0 + until * M, max_gap=max_gap * M)
            return
        r = report(store, T0 + since * M, T0 + until * M, max_gap=max_gap * M)
        compute, storage, covered = brute_force(crawls, max_gap, since, until)
        assert r.cost.accrued.compute == pytest.approx(compute, abs=1e-6)
        assert r.cost.accrued.storage == pytest.approx(storage, abs=1e-6)
        assert r.cost.accrued.total == pytest.approx(compute + storage, abs=1e-5)
        assert r.crawls.coverage.covered_seconds == pytest.approx(covered, abs=1e-3)
        streams = {k for c in crawls if c[0] < until for k in c[2]}
        assert r.crawls.coverage.window_seconds == length * 60 * len(streams)
        gaps = sum((g.end - g.start).total_seconds() for g in r.crawls.coverage.gaps)
        assert gaps == pytest.approx(length * 60 * len(streams) - covered, abs=1e-3)


def stale_by_hand(crawls: list[Crawl], until: int, stale_after: int,
                  pending_after: int) -> list[tuple[int, str, str, bool]]:
    """(since, id, status, at_least) of each stale instance, walking the successful
    instance crawls back from the last before ``until``: a streak goes on while the id is
    in each crawl and not running (a pending one's: while pending)."""
    good = [c for c in crawls if not c[1] and "instances" in c[2] and c[0] < until]
    if not good:
        return []
    found = []
    for record in good[-1][3]:
        if record.status == "running":
            continue
        pending = record.status == "pending"
        first = len(good) - 1
        while first > 0:
            earlier = {r.id: r.status for r in good[first - 1][3]}.get(record.id)
            if earlier is None or earlier == "running" or (pending and earlier != "pending"):
                break
            first -= 1
        limit = pending_after if pending else stale_after
        if until - good[first][0] >= limit:
            found.append((good[first][0], record.id, record.status, first == 0))
    return sorted(found)


#: Histories for the stale rule: two ids, mostly not running, in crawls minutes to hours
#: apart (so streaks begin, change status and end within a few crawls).
idle_history = st.lists(
    st.tuples(st.integers(min_value=1, max_value=120), st.sampled_from((False, False, True)),
              st.sampled_from(("both", "instances", "instances", "buckets")),
              st.lists(st.tuples(st.sampled_from(IDS[:2]),
                                 st.sampled_from(("running", "stopped", "pending", "pending")),
                                 st.sampled_from(range(len(PLANS))),
                                 st.sampled_from(("eu-1", "us-1"))),
                       min_size=0, max_size=2, unique_by=lambda t: t[0]),
              buckets),
    min_size=2, max_size=8)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# The edges a random history reaches seldom: a stopped instance turned pending (its
# pending streak starts then), pending turned stopped (the stopped streak counts the
# pending crawls), an idle instance removed and back (a new streak), and a failed crawl
# inside a streak, a stopped instance whose shape and region change (one streak).
@example(history=[(10, False, "instances", [("i-1", "running", 0, "eu-1")], []),
                  (10, False, "instances", [("i-1", "stopped", 0, "eu-1")], []),
                  (10, False, "instances", [("i-1", "stopped", 2, "us-1")], [])],
         stale_after=5, after_last=10)
@example(history=[(10, False, "instances", [("i-1", "stopped", 0, "eu-1")], []),
                  (10, False, "instances", [("i-1", "pending", 0, "eu-1")], [])],
         stale_after=5, after_last=90)
@example(history=[(10, False, "instances", [("i-1", "pending", 0, "eu-1")], []),
                  (10, True, "instances", [], []),
                  (10, False, "both", [("i-1", "stopped", 1, "us-1")], [("b-1", 1, "private")])],
         stale_after=30, after_last=10)
@example(history=[(10, False, "instances", [("i-1", "stopped", 0, "eu-1")], []),
                  (10, False, "instances", [], []),
                  (10, False, "instances", [("i-1", "stopped", 0, "eu-1")], [])],
         stale_after=5, after_last=10)
@given(history=idle_history, stale_after=st.integers(min_value=1, max_value=400),
       after_last=st.integers(min_value=1, max_value=120))
def test_stale_instances_match_brute_force(history: list[tuple[int, bool, str, list[Snap],
                                                               list[BucketSnap]]],
                                           stale_after: int, after_last: int,
                                           empty_db: Path) -> None:
    """The stale instances the report lists (start of the streak, at_least, status) are
    those found by walking each current idle instance's crawls back by hand, through
    changes of shape, region and idle status, removals, failed and bucket-only crawls."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(empty_db, Path(tmp) / "h.duckdb")
        store = Store(Path(tmp) / "h.duckdb")
        crawls = write(store, history)
        until = crawls[-1][0] + after_last
        if all(c[1] for c in crawls):
            return  # no successful crawl: no report
        r = report(store, T0, T0 + until * M, stale_after=stale_after * M)
        # report() sets pending_stale_after to an hour
        expected = stale_by_hand(crawls, until, stale_after, 60)
        assert [((s.stale_since - T0) // M, s.id, s.status, s.at_least)
                for s in r.stale_instances] == expected
