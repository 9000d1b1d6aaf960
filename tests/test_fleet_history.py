"""The read-side benchmark's bulk history (bench/fleet_history.py) is the store's own.

``bench/scale.py --only read`` measures the report and ``/metrics`` over 30 days of a
million instances written in bulk, not through the store (which would take 20 minutes).
Those figures are honest only if the bulk database is the one the store would hold: here
one small history is written both ways and every table compared row for row, manifests
included, and the evidence chain of the bulk one verified.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import pytest

from nexus_audit.history.store import Store
from nexus_audit.history.verify import verify_history

BENCH = Path(__file__).resolve().parent.parent / "bench" / "fleet_history.py"
#: Every table of the schema (the version views are views over the logs).
TABLES = ("meta", "crawls", "instance_log", "bucket_log", "bucket_size_log", "clock_skews")


@pytest.fixture(scope="module")
def fleet_history() -> ModuleType:
    """The benchmark's module, loaded from its file (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("fleet_history", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleet_history"] = module
    spec.loader.exec_module(module)
    return module


def _history(module: ModuleType) -> Any:
    # A high churn over few days, so every kind of change happens many times.
    return module.FleetHistory(instances=300, buckets=40, days=2, churn=0.5,
                               end=datetime(2025, 3, 1, tzinfo=UTC), seed=3)


def _rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        return sorted(con.execute(f"SELECT * FROM {table}").fetchall(),  # noqa: S608
                      key=repr)
    finally:
        con.close()


def test_the_bulk_history_is_what_the_store_writes(fleet_history: ModuleType,
                                                   tmp_path: Path) -> None:
    """Written in bulk, every table holds exactly the rows the store's commits leave (each
    crawl's manifest too), and the chain verifies with the same head."""
    through_store, in_bulk = tmp_path / "store.duckdb", tmp_path / "bulk.duckdb"
    fleet_history.write_through_store(_history(fleet_history), through_store)
    fleet_history.write_in_bulk(_history(fleet_history), in_bulk)
    for table in TABLES:
        assert _rows(in_bulk, table) == _rows(through_store, table), table
    heads = []
    for path in (through_store, in_bulk):
        with Store(path).read() as con:
            heads.append(verify_history(con).head)
    assert heads[0] == heads[1] is not None


def test_the_history_changes_every_way_it_should(fleet_history: ModuleType,
                                                 tmp_path: Path) -> None:
    """The synthetic churn adds, removes and changes instances and buckets (so the
    comparison above covers versions, removal markers and size rows)."""
    path = tmp_path / "bulk.duckdb"
    fleet_history.write_in_bulk(_history(fleet_history), path)
    con = duckdb.connect(str(path), read_only=True)
    try:
        counts = dict(con.execute(
            """SELECT 'instance ' || CASE WHEN removed THEN 'removed'
                                          WHEN first_crawl = 1 THEN 'first' ELSE 'version' END,
                      count(*) FROM instance_log GROUP BY ALL
               UNION ALL
               SELECT 'bucket ' || CASE WHEN removed THEN 'removed'
                                        WHEN first_crawl = 1 THEN 'first' ELSE 'version' END,
                      count(*) FROM bucket_log GROUP BY ALL
               UNION ALL
               SELECT 'sizes', count(*) FROM bucket_size_log WHERE first_crawl > 1""").fetchall())
    finally:
        con.close()
    assert counts["instance first"] == 300
    assert counts["bucket first"] == 40
    for key in ("instance removed", "instance version", "bucket removed", "bucket version",
                "sizes"):
        assert counts[key] > 5, key
