"""A synthetic fleet history for the read-side benchmark (``bench/scale.py --only read``).

One account crawled hourly (instances and buckets in one crawl) for ``days`` days, ending
at ``end``, with ``churn`` of the fleet changing a day, spread over the hours:

* the first crawl sees the simulator's own fleet (``Fleet.generate``'s records, through
  the crawler's ``instance_from_api`` / ``bucket_from_api``: what a crawl of ``nexus-audit
  simulate --instances N`` would store);
* each hour ``instances * churn / 24`` instance events (30% created, 30% deleted, 15%
  stopped, 15% started, 10% renamed); a created instance is seen ``pending`` by its first
  crawl and ``running`` by the next (as the simulator brings it up), which is one change
  more;
* ``buckets * churn / 24`` bucket events (40% an access flip between private and
  public, 30% created, 30% deleted) and a twentieth of the buckets growing by 0.1-5%
  (usage, not drift).

The same seed always gives the same records; times are whole seconds from ``end``.

Two ways to write it, which give the same database (``tests/test_fleet_history.py``
builds both and compares every table, manifests included):

* :func:`write_through_store`: every crawl through the store's own API (``begin_crawl``,
  ``add_instances``, ``add_buckets``, ``commit``), as a crawler hands it. At a million
  instances that costs about 1.7 s of CPU a crawl (fingerprinting the fleet, compaction):
  20 minutes for 30 days.
* :func:`write_in_bulk`: the rows the store would hold once at rest (compacted: every
  version closed at the crawl that replaced or removed it, removal markers closed, each
  log's compaction mark in ``meta``), each
  crawl's row with its evidence manifest computed as a commit seals it (the state sums
  updated from the rows each crawl changes), appended table by table. Seconds a day of
  history at a million instances; ``nexus-audit verify`` checks every manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from nexus_audit.domain.model import (
    Bucket,
    CrawlSummary,
    Instance,
    bucket_from_api,
    instance_from_api,
)
from nexus_audit.history.chain import (
    CRAWL_COLUMNS,
    KIND_VIEWS,
    VIEW_COLUMNS,
    StateSum,
    crawl_row,
    element,
    manifest,
)
from nexus_audit.history.schema import (
    BUCKET_VERSION_COLUMNS,
    COMPACTED_KEY,
    INSTANCE_COLUMNS,
)
from nexus_audit.history.store import Store
from nexus_audit.simulator.synthetic import gc_paused, random_buckets, random_instances

ACCOUNT = "scale"
KINDS = ("instances", "buckets")
#: How long after its hour each crawl finishes (a crawl takes minutes at this size).
CRAWL_SECONDS = 300
#: The instance events' mix: (event, share).
INSTANCE_EVENTS = (("created", 0.30), ("deleted", 0.30), ("stopped", 0.15),
                   ("started", 0.15), ("renamed", 0.10))
BUCKET_EVENTS = (("access", 0.40), ("created", 0.30), ("deleted", 0.30))


@dataclass
class Hour:
    """One crawl: when, and what it sees that the crawl before did not."""

    index: int
    started_at: datetime
    finished_at: datetime
    #: Instances new or changed since the previous crawl, and the ids gone.
    instances: list[Instance] = field(default_factory=list)
    instances_removed: list[str] = field(default_factory=list)
    #: Buckets new or changed (any field, size included), and the ids gone.
    buckets: list[Bucket] = field(default_factory=list)
    buckets_removed: list[str] = field(default_factory=list)

    def summary(self, instances: int, buckets: int) -> CrawlSummary:
        """The crawl's summary as the crawler would make it."""
        pages = {"GET /buckets": {"200": max(1, math.ceil(buckets / 100))},
                 "GET /instances": {"200": max(1, math.ceil(instances / 100))}}
        return CrawlSummary(
            account=ACCOUNT, kinds=KINDS, started_at=self.started_at,  # type: ignore[arg-type]
            finished_at=self.finished_at, status="succeeded", instances=instances,
            buckets=buckets, requests=sum(c["200"] for c in pages.values()),
            requests_by_endpoint=pages)


class FleetHistory:
    """The fleet as each hourly crawl sees it (iterate :meth:`hours` once)."""

    def __init__(self, *, instances: int, buckets: int, days: int, churn: float,
                 end: datetime, seed: int = 19) -> None:
        self.n_instances = instances
        self.n_buckets = buckets
        self.crawls = days * 24
        self.churn = churn
        self.start = end - timedelta(hours=self.crawls)
        self.rng = random.Random(seed)
        with gc_paused():
            fleet, _ = random_instances(self.rng, instances)
            self.instances: dict[str, Instance] = {
                r.id: r for r in (instance_from_api(i.to_json()) for i in fleet)}
            del fleet
            self.buckets: dict[str, Bucket] = {
                r.id: r for r in (bucket_from_api(b.to_json())
                                  for b in random_buckets(self.rng, buckets))}
        # Ids in a list too, for drawing one at random (swap-remove on delete).
        self._ids = list(self.instances)
        self._where = {i: n for n, i in enumerate(self._ids)}
        self._pending: list[str] = []
        self._serial = 0

    def _events(self, hour: int, total: int) -> int:
        """Events in ``hour`` so that ``total * churn`` happen a day (fractions carried)."""
        rate = total * self.churn / 24
        return math.floor((hour + 1) * rate) - math.floor(hour * rate)

    def _new_instance(self, at: datetime) -> Instance:
        while True:
            (made,), _ = random_instances(self.rng, 1)
            if made.id not in self.instances:
                break
        made.status = "pending"
        made.created_at = at.timestamp()
        return instance_from_api(made.to_json())

    def _new_bucket(self, at: datetime) -> Bucket:
        (made,) = random_buckets(self.rng, 1)
        self._serial += 1
        made.id = f"{made.id}-{self._serial}"
        made.access = "private"
        made.created_at = at.timestamp()
        return bucket_from_api(made.to_json())

    def _drop_instance(self, ident: str) -> None:
        at = self._where.pop(ident)
        last = self._ids.pop()
        if last != ident:
            self._ids[at] = last
            self._where[last] = at
        del self.instances[ident]

    def _add_instance(self, record: Instance) -> None:
        self.instances[record.id] = record
        self._where[record.id] = len(self._ids)
        self._ids.append(record.id)

    def hours(self) -> Iterator[Hour]:
        """Each crawl in order: the first sees the whole fleet, the others the changes."""
        for index in range(self.crawls):
            at = self.start + timedelta(hours=index)
            hour = Hour(index, at, at + timedelta(seconds=CRAWL_SECONDS))
            if index == 0:
                hour.instances = list(self.instances.values())
                hour.buckets = list(self.buckets.values())
            else:
                self._churn(index, hour)
            yield hour

    def _churn(self, index: int, hour: Hour) -> None:
        rng = self.rng
        changed: dict[str, Instance] = {}
        removed: list[str] = []
        born: set[str] = set()  # created this hour: a deletion now was never seen
        # The instances created an hour ago are up now.
        for ident in self._pending:
            if ident in self.instances:
                changed[ident] = self.instances[ident] = self.instances[ident]._replace(
                    status="running")
        self._pending = []
        for _ in range(self._events(index, self.n_instances)):
            event = _pick(rng, INSTANCE_EVENTS)
            if event == "created":
                record = self._new_instance(hour.started_at)
                self._add_instance(record)
                self._pending.append(record.id)
                born.add(record.id)
                changed[record.id] = record
                continue
            ident = self._ids[rng.randrange(len(self._ids))]
            old = self.instances[ident]
            if event == "deleted":
                self._drop_instance(ident)
                changed.pop(ident, None)
                if ident in self._pending:
                    self._pending.remove(ident)
                if ident not in born:
                    removed.append(ident)
                continue
            if event == "stopped" and old.status == "running":
                new = old._replace(status="stopped")
            elif event == "started" and old.status == "stopped":
                new = old._replace(status="running")
            elif event == "renamed":
                new = old._replace(name=f"{old.name.rsplit('-', 1)[0]}-r{index}")
            else:
                continue  # nothing to stop or start: no event
            changed[ident] = self.instances[ident] = new
        hour.instances = list(changed.values())
        hour.instances_removed = removed

        bchanged: dict[str, Bucket] = {}
        bremoved: list[str] = []
        bborn: set[str] = set()
        for _ in range(self._events(index, self.n_buckets)):
            event = _pick(rng, BUCKET_EVENTS)
            if event == "created":
                record = self._new_bucket(hour.started_at)
                self.buckets[record.id] = bchanged[record.id] = record
                bborn.add(record.id)
                continue
            ident = rng.choice(list(self.buckets))
            if event == "deleted":
                del self.buckets[ident]
                bchanged.pop(ident, None)
                if ident not in bborn:
                    bremoved.append(ident)
                continue
            old_b = self.buckets[ident]
            access = "public" if old_b.access == "private" else "private"
            bchanged[ident] = self.buckets[ident] = old_b._replace(access=access)
        ids = list(self.buckets)
        for ident in rng.sample(ids, k=max(1, len(ids) // 20)):
            old_b = self.buckets[ident]
            grown = max(1024, int(old_b.size_bytes * rng.uniform(0.001, 0.05)))
            bchanged[ident] = self.buckets[ident] = old_b._replace(
                size_bytes=old_b.size_bytes + grown)
        hour.buckets = list(bchanged.values())
        hour.buckets_removed = bremoved


def _pick(rng: random.Random, mix: tuple[tuple[str, float], ...]) -> str:
    roll = rng.random()
    for name, share in mix:
        roll -= share
        if roll < 0:
            return name
    return mix[-1][0]


# -- writing through the store -----------------------------------------------------------


def write_through_store(history: FleetHistory, path: Path) -> None:
    """Every crawl through the store's API, the whole fleet each time (pages of 1,000)."""
    store = Store(path)
    store.migrate()
    for hour in history.hours():
        staged = store.begin_crawl(ACCOUNT, KINDS, hour.started_at)  # type: ignore[arg-type]
        fleet = list(history.instances.values())
        for n in range(0, len(fleet), 1000):
            staged.add_instances(fleet[n:n + 1000])
        staged.add_buckets(list(history.buckets.values()))
        store.commit(staged, hour.summary(len(fleet), len(history.buckets)))
    store.close()


# -- writing in bulk ---------------------------------------------------------------------

#: Per log table: its columns in the order the rows below list them.
_LOG_COLUMNS = {
    "instance_log": ("account", *INSTANCE_COLUMNS, "first_crawl", "until_crawl", "removed"),
    "bucket_log": ("account", *BUCKET_VERSION_COLUMNS, "first_crawl", "until_crawl",
                   "removed"),
    "bucket_size_log": ("account", "id", "size_bytes", "first_crawl", "until_crawl",
                        "removed"),
}
#: Per version view: its log table, and the record fields it keeps (by name).
_VIEWS = {"instance_versions": ("instance_log", INSTANCE_COLUMNS),
          "bucket_versions": ("bucket_log", BUCKET_VERSION_COLUMNS),
          "bucket_sizes": ("bucket_size_log", ("id", "size_bytes"))}


class _Log:
    """One log table's rows as the store holds them at rest, and its view's state sum."""

    def __init__(self, view: str) -> None:
        self.view = view
        self.table, self.fields = _VIEWS[view]
        self.rows: list[list[Any]] = []
        #: id -> (index of its open row, the values its view's line lists).
        self.open: dict[str, tuple[int, tuple[Any, ...]]] = {}
        self.elements: dict[str, bytes] = {}
        self.state = StateSum()

    def put(self, record: Instance | Bucket, crawl: int) -> None:
        """A version of ``record`` from ``crawl`` on, if it differs from the open one."""
        values = tuple(getattr(record, f) for f in self.fields)
        ident = values[0]
        found = self.open.get(ident)
        if found is not None:
            if found[1] == values:
                return
            self.rows[found[0]][-2] = crawl  # closed by the new version
            self.state.remove(self.elements[ident])
        self.open[ident] = (len(self.rows), values)
        self.rows.append([ACCOUNT, *values, crawl, None, False])
        digest = element(ACCOUNT, self.view, values)
        self.elements[ident] = digest
        self.state.add(digest)

    def remove(self, ident: str, crawl: int) -> None:
        """A removal marker (closed at once, as compaction leaves it)."""
        at, _ = self.open.pop(ident)
        self.rows[at][-2] = crawl
        blanks = [None] * (len(self.fields) - 1)
        self.rows.append([ACCOUNT, ident, *blanks, crawl, crawl, True])
        self.state.remove(self.elements.pop(ident))


def write_in_bulk(history: FleetHistory, path: Path) -> None:
    """The database the store would hold after :func:`write_through_store`, written
    table by table (see the module's docstring)."""
    store = Store(path)
    store.migrate()
    store.close()
    logs = {view: _Log(view) for view in _VIEWS}
    crawls: list[tuple[Any, ...]] = []
    prev: str | None = None
    prev_crawl: int | None = None
    for hour in history.hours():
        crawl_id = hour.index + 1
        for record in hour.instances:
            logs["instance_versions"].put(record, crawl_id)
        for ident in hour.instances_removed:
            logs["instance_versions"].remove(ident, crawl_id)
        for bucket in hour.buckets:
            logs["bucket_versions"].put(bucket, crawl_id)
            logs["bucket_sizes"].put(bucket, crawl_id)
        for ident in hour.buckets_removed:
            logs["bucket_versions"].remove(ident, crawl_id)
            logs["bucket_sizes"].remove(ident, crawl_id)
        summary = hour.summary(len(history.instances), len(history.buckets))
        row = _crawl_values(summary, crawl_id)
        text = manifest(seq=crawl_id, prev=prev, prev_crawl=prev_crawl,
                        crawl=crawl_row(row),
                        state={view: logs[view].state
                               for kind in KINDS for view in KIND_VIEWS[kind]})
        digest = _sha256(text)
        crawls.append((*(row[c] for c in CRAWL_COLUMNS), crawl_id, digest, text))
        prev, prev_crawl = digest, crawl_id
    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.begin()
        appender = con.appender("crawls")
        appender.append_rows(crawls)
        appender.flush()
        for log in logs.values():
            _append(con, log.table, log.rows)
            if log.rows:  # the mark the store's compaction leaves (schema 6)
                con.execute("INSERT OR REPLACE INTO meta VALUES ($k, $v)",
                            {"k": COMPACTED_KEY.format(log=log.table),
                             "v": str(max(row[-3] for row in log.rows))})
        con.commit()
        con.execute("CHECKPOINT")
    finally:
        con.close()


def _append(con: duckdb.DuckDBPyConnection, table: str, rows: list[list[Any]]) -> None:
    """Append ``rows`` (in :data:`_LOG_COLUMNS` order) to ``table``, whose columns are in
    another order: through a staging table of that order."""
    columns = _LOG_COLUMNS[table]
    stage = f"bulk_{table}"
    con.execute(f"CREATE TEMP TABLE {stage} AS SELECT {', '.join(columns)} "  # noqa: S608
                f"FROM {table} LIMIT 0")
    appender = con.appender(stage)
    for n in range(0, len(rows), 100_000):
        appender.append_rows(rows[n:n + 100_000])
    appender.flush()
    con.execute(f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
                f"SELECT * FROM {stage}")
    con.execute(f"DROP TABLE {stage}")


def _crawl_values(summary: CrawlSummary, crawl_id: int) -> dict[str, Any]:
    """A crawl's stored columns (as :data:`~nexus_audit.history.chain.CRAWL_COLUMNS`)."""
    return {
        "crawl_id": crawl_id, "account": summary.account, "kinds": list(summary.kinds),
        "started_at": summary.started_at, "finished_at": summary.finished_at,
        "status": summary.status, "instances": summary.instances,
        "buckets": summary.buckets, "requests": summary.requests,
        "retries": summary.retries, "total_mismatch": None, "error": None,
        "error_code": None, "request_id": None,
        "requests_by_endpoint": json.dumps(
            {k: dict(v) for k, v in summary.requests_by_endpoint.items()}, sort_keys=True),
    }


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: The columns the chain's state sums list per view (checked against the store's).
assert {v: cols for v, (_, cols) in _VIEWS.items()} == dict(VIEW_COLUMNS)
