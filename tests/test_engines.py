"""The README's Spark and ClickHouse blocks, run on the real engines over one export, give
the report's inventory, public buckets and drift counts.

The blocks are read from README.md itself (the fenced block after each
``<!-- engine-snippet: NAME ... -->`` marker), so the README cannot drift from what is
tested. Spark runs in local mode (pyspark, one session for the module); ClickHouse runs
embedded (chdb). Both are test dependencies (``.[test]``); locally a missing engine skips,
under CI it fails.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from nexus_audit.audit.report import Report, build_report
from nexus_audit.domain.model import Bucket, Instance
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import Window
from nexus_audit.history.parquet import export_history
from nexus_audit.history.store import Store
from tests.ci import skip_or_fail
from tests.test_store import crawl

pytestmark = [
    pytest.mark.slow,
    # pyspark 4.3 warns on import that it does not fully support pandas 3 (which chdb pulls
    # in); these tests never convert to or from pandas (rows are collected as Row tuples).
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

README = Path(__file__).resolve().parent.parent / "README.md"
T0 = datetime(2026, 6, 1, tzinfo=UTC)
H = timedelta(hours=1)
M = timedelta(minutes=1)
#: Crawls go on after ``until`` on the same day, so the export holds some the answers
#: must leave out; the window starts after several crawls, so drift has a baseline.
WINDOW = Window(T0 + 3 * H, T0 + 10 * H + 30 * M)
HOURS = 13
#: Every account name looks like a number, so that partition type inference, left on,
#: turns every one of them into a number (Spark: 007 -> 7, 1e3 -> 1000; ClickHouse refuses
#: the mix) and the answers' accounts no longer match: the blocks must keep them strings.
MAIN, SPLIT, LATE, GONE = "007", "0042", "1e3", "12"
ACCOUNTS = {MAIN, SPLIT, LATE, GONE}


# -- the README's blocks ---------------------------------------------------------------------

def snippet(name: str) -> str:
    """The code of the README block marked ``<!-- engine-snippet: name ... -->``."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(rf"<!-- engine-snippet: {name}\b[^>]*-->\n```\w+\n(.*?)\n```", text,
                       re.DOTALL)
    assert len(found) == 1, f"README.md must have exactly one engine-snippet block {name!r}"
    return str(found[0])


def clickhouse_statements(sql: str, export: Path, window: Window) -> list[str]:
    """The ClickHouse block's statements, with the test's export directory and window."""
    assert sql.count("'DIR/") == 4, "one file('DIR/<table>/...') per table"
    assert "'" not in str(export)
    assert ";" not in str(export)
    sql = sql.replace("'DIR/", f"'{export}/")
    statements = [s.strip() for s in sql.split(";\n")]
    statements[-1] = statements[-1].removesuffix(";")
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    window_set = [i for i, s in enumerate(statements) if s.startswith("SET param_since")]
    assert len(window_set) == 1, "the block sets the window in one SET param_since statement"
    statements[window_set[0]] = (f"SET param_since = '{window.since.strftime(fmt)}', "
                                 f"param_until = '{window.until.strftime(fmt)}'")
    return statements


def _returns_rows(statement: str) -> bool:
    code = "\n".join(line for line in statement.splitlines()
                     if not line.lstrip().startswith("--")).lstrip().upper()
    return code.startswith(("SELECT", "WITH"))


# -- the same answers, from the report and from an engine's rows ------------------------------

@dataclass(frozen=True, slots=True)
class Answers:
    """Inventory, public buckets and drift counts, in one comparable shape."""

    instances_by_status: dict[str, int]
    buckets: int
    buckets_size_bytes: int
    #: (account, id, region, access, size_bytes), sorted.
    public_buckets: list[tuple[str, str, str | None, str | None, int]]
    #: (kind, change, field) -> drift rows.
    drift: dict[tuple[str, str, str | None], int]


def from_report(report: Report) -> Answers:
    """The report's answers."""
    inventory = report.inventory
    return Answers(
        instances_by_status=dict(inventory.instances_by_status),
        buckets=inventory.buckets_total, buckets_size_bytes=inventory.buckets_size_bytes,
        public_buckets=sorted((b.account, b.id, b.region, b.access, b.size_bytes)
                              for b in report.public_buckets),
        drift=dict(Counter((d.kind, d.change, d.field) for d in report.drift)))


def from_rows(instances: Sequence[Sequence[Any]], buckets: Sequence[Sequence[Any]],
              public: Sequence[Sequence[Any]], drift: Sequence[Sequence[Any]]) -> Answers:
    """An engine's answers from the rows of its four queries (numbers may come as text)."""
    by_status: Counter[str] = Counter()
    for _account, status, n in instances:
        by_status[status] += int(n)
    return Answers(
        instances_by_status=dict(sorted(by_status.items())),
        buckets=sum(int(n) for _a, n, _s in buckets),
        buckets_size_bytes=sum(int(s) for _a, _n, s in buckets),
        public_buckets=sorted((a, i, r, acc, int(s)) for a, i, r, acc, s in public),
        drift={(k, c, f): int(n) for k, c, f, n in drift})


# -- one history, its export and its report ---------------------------------------------------

def _inst(ident: str, *, status: str = "running", memory_gb: float = 2.0,
          plan: str | None = "micro", tags: str = "{}", extra: str = "{}",
          region: str = "eu-1") -> Instance:
    return Instance(ident, ident, status, region, 2, memory_gb, plan, tags,
                    "2026-01-01T00:00:00Z", extra)


def _bucket(ident: str, access: str | None, size: int, region: str = "eu-1") -> Bucket:
    # access None: the store keeps what it is given; NULL is exposed (the one rule).
    return Bucket(ident, region, size, access, "2026-01-01T00:00:00Z", "{}", "{}")  # type: ignore[arg-type]


def _main(h: int) -> tuple[list[Instance], list[Bucket]]:
    """MAIN, every hour, both kinds: every kind of change, and ones that are not drift."""
    instances = [
        _inst("i-web", tags='{"env":"prod"}' if h < 5 else '{"env":"prod","owner":"ops"}'),
        # status at 4; memory and plan together at 8 (two drift rows for one change)
        _inst("i-batch", status="running" if h < 4 else "stopped",
              memory_gb=4.0 if h < 8 else 8.0, plan="micro" if h < 8 else "standard"),
        # a change of extra only (not a drift field): a new version, but no drift row
        _inst("i-extra", extra='{"x":1}' if h != 6 else '{"x":2}'),
        *([_inst("i-temp")] if 2 <= h <= 6 else []),               # removed at 7
        *([_inst("i-new", status="pending" if h == 6 else "running")] if h >= 6 else []),
        *([_inst("i-late")] if h >= 11 else []),                   # after until
    ]
    buckets = [
        _bucket("b-site", "public-read" if 4 <= h <= 6 else "private", 10**9),
        _bucket("b-logs", "Private", (h + 1) * 10**8),              # size only: no drift
        _bucket("b-null", None, 5 * 10**8),
        *([_bucket("b-gone", "private", 10**7)] if h < 5 else []),  # removed at 5
        *([_bucket("b-open", "public", 3 * 10**9)] if h >= 9 else []),  # added exposed
        _bucket("b-after", "public" if h >= 11 else "private", 10**6),  # after until
    ]
    return instances, buckets


def build_history(store: Store) -> None:
    """Four accounts over 13 hours, crawls continuing after the window's end.

    MAIN: both kinds hourly, a failed crawl at 8 (its changes land at 9). SPLIT: instances
    every two hours and buckets in crawls of their own in between. LATE: first crawled
    inside the window, so its first crawl has no drift; a failed crawl at 6. GONE: crawled
    only before the window (its inventory is as of its last crawl).
    """
    for h in range(HOURS):
        at = T0 + h * H
        instances, buckets = _main(h)
        if h == 8:
            crawl(store, at, account=MAIN, instances=instances[:1], buckets=buckets[:1],
                  failed=True)
        else:
            crawl(store, at, account=MAIN, instances=instances, buckets=buckets)
        if h % 2 == 0:
            crawl(store, at + 10 * M, account=SPLIT, instances=[
                _inst("j-1"), _inst("j-2", status="stopped" if h < 6 else "running"),
                *([_inst("j-3", region="us-1")] if h < 8 else [])])
        else:
            crawl(store, at + 10 * M, account=SPLIT, buckets=[
                _bucket("c-1", "public-read", 7 * 10**8, region="eu-1" if h < 5 else "us-1"),
                _bucket("c-2", "private", 10**8)])
        if h >= 4:
            crawl(store, at + 20 * M, account=LATE, failed=h == 6, instances=[
                _inst("k-1"), _inst("k-2", status="running" if h < 9 else "stopped")],
                buckets=[_bucket("d-1", "private" if h < 7 else "authenticated-read", 10**9)])
        if h <= 2:
            crawl(store, at + 30 * M, account=GONE, instances=[_inst("z-1", status="stopped")],
                  buckets=[_bucket("e-1", "private", 2 * 10**9)])


@dataclass(frozen=True, slots=True)
class Exported:
    """An export of WINDOW and the report's answers over the same window."""

    directory: Path
    expected: Answers


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The history, exported to Parquet, and the report of the database for WINDOW."""
    root = tmp_path_factory.mktemp("engines")
    store = Store(root / "history.duckdb")
    store.migrate()
    build_history(store)
    directory = root / "export"
    export_history(store, directory, WINDOW)
    report = build_report(store, WINDOW, stale_after=2 * H, pending_stale_after=H,
                          max_gap_instances=2 * H, max_gap_buckets=2 * H,
                          pricing=load_pricing(), now=WINDOW.until)
    store.close()
    expected = from_report(report)
    # The history is worth testing on: every kind of answer is there to get wrong.
    assert {c for _k, c, _f in expected.drift} == {"added", "removed", "changed"}
    assert {k for k, _c, _f in expected.drift} == {"instance", "bucket"}
    assert len(expected.instances_by_status) >= 2
    assert {b[3] for b in expected.public_buckets} >= {None, "Private", "public"}
    return Exported(directory, expected)


def engine(module: str) -> ModuleType:
    """Import an engine's module; skip without it locally, fail under CI."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        skip_or_fail(f"{module} is not installed ({exc}); pip install -e '.[test]'")


# -- Spark ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Spark session in local mode for the module (one core, small memory, no UI); its
    JVM is stopped by its process at the end."""
    sql = engine("pyspark.sql")
    if shutil.which("java") is None:
        skip_or_fail("java is not installed (apt-get install openjdk-17-jre-headless)")
    scratch = tmp_path_factory.mktemp("spark")
    session = (
        sql.SparkSession.builder.master("local[1]").appName("nexus-audit-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")  # loopback only
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.memory", "512m")
        .config("spark.sql.shuffle.partitions", "1")
        # A few hundred rows: planning adaptively and compiling code per query cost more
        # CPU than they save (measured: about a sixth of the module's time on 2 cores).
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.default.parallelism", "1")
        .config("spark.local.dir", str(scratch))
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        # A short-lived JVM: the C1 compiler only and the serial collector start faster.
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
        # Not UTC on purpose: the README's block must not depend on the session time zone.
        .config("spark.sql.session.timeZone", "America/New_York")
        .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    context = importlib.import_module("pyspark").SparkContext
    try:
        yield session
    finally:
        session.stop()
        gateway = context._gateway
        if gateway is not None:
            gateway.shutdown()
            process = getattr(gateway, "proc", None)
            if process is not None:  # the JVM pyspark launched (a subprocess.Popen)
                if process.stdin is not None:
                    process.stdin.close()  # pyspark's JVM exits when its stdin closes
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        context._gateway = None
        context._jvm = None


def test_spark_block_agrees_with_the_report(spark: Any, exported: Exported) -> None:
    """The README's PySpark block over the export gives the report's inventory, public
    buckets and drift counts."""
    namespace: dict[str, Any] = {}
    # The README's own code, compiled under its name so a failure points there.
    exec(compile(snippet("spark"), "README.md (spark block)", "exec"), namespace)  # noqa: S102
    answers = namespace["audit_answers"](spark, str(exported.directory), WINDOW.since,
                                         WINDOW.until)
    rows = {name: [tuple(r) for r in frame.collect()] for name, frame in answers.items()}
    got = from_rows(rows["instances_by_status"], rows["buckets"], rows["public_buckets"],
                    rows["drift_counts"])
    assert got == exported.expected
    # Partition values are strings: the accounts keep their names.
    assert {r[0] for r in rows["buckets"]} == ACCOUNTS


# -- ClickHouse -----------------------------------------------------------------------------

def test_clickhouse_block_agrees_with_the_report(exported: Exported) -> None:
    """The README's ClickHouse block, run statement by statement in chdb over the export,
    gives the report's inventory, public buckets and drift counts."""
    chdb = engine("chdb.session")
    statements = clickhouse_statements(snippet("clickhouse"), exported.directory, WINDOW)
    session = chdb.Session()
    results: list[list[list[Any]]] = []
    try:
        for statement in statements:
            if _returns_rows(statement):
                out = session.query(statement, "JSONCompact")
                results.append(json.loads(out.bytes())["data"])
            else:
                session.query(statement)
    finally:
        session.close()
    assert len(results) == 4, "the block ends with four answers"
    got = from_rows(*results)
    assert got == exported.expected
    assert {r[0] for r in results[1]} == ACCOUNTS
