"""The synthetic CloudNexus fleet: seeded generation, queries, mutations and churn.

Pure logic: no HTTP here. Time comes from an injected clock; randomness from
``random.Random`` instances seeded from the fleet seed, never the global generator,
so the same seed always gives the same fleet and the same churn sequence.
"""

from __future__ import annotations

import random
import threading
from bisect import bisect_right, insort
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .clock import Clock, SystemClock, wall_seconds
from .index import ALL, FilterKey, build_indexes, discard, filter_key, matches, rs_keys
from .synthetic import (
    _ID_ALPHABET,
    _ROLES,
    _TEAMS,
    FLEET_EPOCH,
    IMAGES,
    PLAN_SHAPES,
    REGIONS,
    STATUSES,
    Bucket,
    Instance,
    copy_bucket,
    copy_instance,
    gc_paused,
    iso_utc,
    pick_env,
    random_buckets,
    random_instances,
    tag_match,
)

__all__ = [
    "FLEET_EPOCH",
    "IMAGES",
    "PLAN_SHAPES",
    "REGIONS",
    "STATUSES",
    "Bucket",
    "ChurnEvent",
    "Fleet",
    "Instance",
    "filter_key",
    "iso_utc",
    "tag_match",
]

# How many composite filter sets (tags with anything else) keep an index of their own.
_COMPOSITE_CACHE: Final[int] = 64


@dataclass(frozen=True, slots=True)
class ChurnEvent:
    """One change made by a churn step (for logs and tests)."""

    kind: str  # created|started|stopped|deleted|renamed|grown|access
    resource_id: str
    detail: str = ""


class Fleet:
    """The mutable state of one simulated account, safe to use from several threads.

    Queries return copies sorted by id, so callers never see later mutations. Listing
    is the hot path (one call per page), so the fleet keeps sorted id indexes: all ids,
    one per region, per status, and per region and status. A filter set with tags gets
    an index of its own, built on the first page that asks for it (one pass over the
    narrowest region/status index) and then kept current through every change, for the
    ``_COMPOSITE_CACHE`` latest such sets. A page is a bisect and a slice of one index,
    O(log fleet + page), and ``total`` is that index's length.
    """

    def __init__(
        self,
        instances: Iterable[Instance] = (),
        buckets: Iterable[Bucket] = (),
        *,
        seed: int = 0,
        clock: Clock | None = None,
        pending_seconds: float = 10.0,
        name_counters: Mapping[str, int] | None = None,
    ) -> None:
        self._instances: dict[str, Instance] = {i.id: i for i in instances}
        self._buckets: dict[str, Bucket] = {b.id: b for b in buckets}
        self._bucket_ids: list[str] = sorted(self._buckets)
        self._clock: Clock = clock or SystemClock()
        self._pending_seconds = pending_seconds
        # Separate streams so that adding instances does not shift the churn sequence.
        self._id_rng = random.Random(f"{seed}:ids")
        self._churn_rng = random.Random(f"{seed}:churn")
        if name_counters is not None:
            # Fleet.generate counted the names as it made them: same result, no re-parse.
            self._name_counters: dict[str, int] = dict(name_counters)
        else:
            self._name_counters = {}
            for inst in self._instances.values():
                self._bump_counter(inst.name)
        self._maturing: set[str] = {
            i.id for i in self._instances.values() if i.ready_at is not None
        }
        self._by_rs = build_indexes(self._instances)
        self._composite: OrderedDict[FilterKey, list[str]] = OrderedDict()
        self._lock = threading.RLock()

    @classmethod
    def generate(
        cls,
        *,
        seed: int,
        instances: int,
        buckets: int,
        clock: Clock | None = None,
        pending_seconds: float = 10.0,
    ) -> Fleet:
        """Build a realistic fleet; the same arguments always give the same fleet."""
        rng = random.Random(seed)
        # A million new objects would set off many collections that find no garbage.
        with gc_paused():
            insts, counters = random_instances(rng, instances)
            bucket_list = random_buckets(rng, buckets)
            return cls(
                insts,
                bucket_list,
                seed=seed,
                clock=clock,
                pending_seconds=pending_seconds,
                name_counters=counters,
            )

    # -- instances -------------------------------------------------------------------

    def query_instances(
        self,
        *,
        region: str | None = None,
        status: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[Instance]:
        """Instances matching all given filters, as copies sorted by id."""
        with self._lock:
            self._settle()
            ids = self._ids(filter_key(region, status, tags))
            return [copy_instance(self._instances[iid]) for iid in ids]

    def listing(
        self,
        *,
        region: str | None = None,
        status: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[Instance]:
        """Like :meth:`query_instances` but without copies, O(result).

        The instances are the live objects: serialize them at once and never mutate
        them. The server's page path is :meth:`page_instances`, which is O(page).
        """
        with self._lock:
            self._settle()
            instances = self._instances
            return [instances[iid] for iid in self._ids(filter_key(region, status, tags))]

    def page_instances(
        self,
        *,
        region: str | None = None,
        status: str | None = None,
        tags: Mapping[str, str] | None = None,
        after: str | None,
        limit: int,
    ) -> tuple[list[Instance], bool, int]:
        """One keyset page: up to ``limit`` instances with id > ``after``, sorted by id.

        Returns the live instances (serialize them at once, never mutate them), whether
        more follow, and how many match the filters in all. Costs a bisect and a slice
        of one index: O(log fleet + page).
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        with self._lock:
            self._settle()
            ids = self._ids(filter_key(region, status, tags))
            start = bisect_right(ids, after) if after is not None else 0
            instances = self._instances
            chunk = [instances[iid] for iid in ids[start : start + limit]]
            return chunk, start + limit < len(ids), len(ids)

    def instance_ids(self) -> list[str]:
        """All instance ids, sorted."""
        with self._lock:
            return list(self._by_rs[ALL])

    def get_instance(self, instance_id: str) -> Instance | None:
        """A copy of one instance, or None."""
        with self._lock:
            self._settle()
            inst = self._instances.get(instance_id)
            return copy_instance(inst) if inst else None

    def add_instance(
        self,
        *,
        name: str,
        plan: str | None,
        region: str,
        image_id: str = IMAGES[0],
        ssh_keys: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
        status: str = "pending",
        instance_id: str | None = None,
        cpu: int | None = None,
        memory_gb: int | None = None,
    ) -> Instance:
        """Create an instance (pending by default, running after ``pending_seconds``)."""
        if plan is not None and plan not in PLAN_SHAPES:
            raise ValueError(f"unknown plan {plan!r}")
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        shape = PLAN_SHAPES[plan] if plan else (cpu or 1, memory_gb or 1)
        with self._lock:
            now = wall_seconds(self._clock)
            new_id = instance_id or self._new_instance_id()
            if new_id in self._instances:
                raise ValueError(f"instance {new_id} already exists")
            inst = Instance(
                id=new_id,
                name=name,
                status=status,
                region=region,
                cpu=cpu if cpu is not None else shape[0],
                memory_gb=memory_gb if memory_gb is not None else shape[1],
                plan=plan,
                tags=dict(tags or {}),
                image_id=image_id,
                created_at=now,
                ssh_keys=tuple(ssh_keys),
                ready_at=now + self._pending_seconds if status == "pending" else None,
            )
            self._instances[new_id] = inst
            self._index_add(inst)
            if inst.ready_at is not None:
                self._maturing.add(new_id)
            self._bump_counter(name)
            return copy_instance(inst)

    def delete_instance(self, instance_id: str) -> Instance:
        """Remove an instance and return it; ``KeyError`` if there is none."""
        with self._lock:
            inst = self._instances.pop(instance_id)
            self._index_remove(inst)
            self._maturing.discard(instance_id)
            return inst

    def set_instance_status(self, instance_id: str, status: str) -> None:
        """Force an instance's status; ``KeyError`` if there is none."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._lock:
            inst = self._instances[instance_id]
            self._set_status(inst, status)
            inst.ready_at = None
            self._maturing.discard(instance_id)

    def rename_instance(self, instance_id: str, name: str) -> None:
        """Rename an instance; ``KeyError`` if there is none."""
        with self._lock:
            self._instances[instance_id].name = name

    # -- buckets ---------------------------------------------------------------------

    def query_buckets(self) -> list[Bucket]:
        """All buckets as copies sorted by id."""
        with self._lock:
            return [copy_bucket(self._buckets[bid]) for bid in self._bucket_ids]

    def page_buckets(self, *, after: str | None, limit: int) -> tuple[list[Bucket], bool, int]:
        """One keyset page of buckets, like :meth:`page_instances` (live objects)."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        with self._lock:
            ids = self._bucket_ids
            start = bisect_right(ids, after) if after is not None else 0
            chunk = [self._buckets[bid] for bid in ids[start : start + limit]]
            return chunk, start + limit < len(ids), len(ids)

    def get_bucket(self, bucket_id: str) -> Bucket | None:
        """A copy of one bucket, or None."""
        with self._lock:
            b = self._buckets.get(bucket_id)
            return copy_bucket(b) if b else None

    def add_bucket(
        self,
        bucket_id: str,
        *,
        region: str = REGIONS[0],
        size_bytes: int = 0,
        access: str = "private",
        tags: Mapping[str, str] | None = None,
    ) -> Bucket:
        """Create a bucket with a chosen id."""
        with self._lock:
            if bucket_id in self._buckets:
                raise ValueError(f"bucket {bucket_id} already exists")
            b = Bucket(bucket_id, region, size_bytes, access, wall_seconds(self._clock),
                       dict(tags or {}))
            self._buckets[bucket_id] = b
            insort(self._bucket_ids, bucket_id)
            return copy_bucket(b)

    def set_bucket_access(self, bucket_id: str, access: str) -> None:
        """Set a bucket's access (any non-empty string); ``KeyError`` if there is none."""
        if not access:
            raise ValueError("access must be a non-empty string")
        with self._lock:
            self._buckets[bucket_id].access = access

    def add_bucket_bytes(self, bucket_id: str, delta: int) -> None:
        """Grow (or shrink) a bucket's size, never below zero."""
        with self._lock:
            b = self._buckets[bucket_id]
            b.size_bytes = max(0, b.size_bytes + delta)

    # -- churn -----------------------------------------------------------------------

    def churn_step(self) -> list[ChurnEvent]:
        """One seeded step of change: creates, starts, stops, deletes, renames, grows, flips.

        The random draws are the same as sampling from freshly sorted id lists (the
        indexes are those lists), so a seed gives the same churn at any fleet size.
        """
        rng = self._churn_rng
        events: list[ChurnEvent] = []
        with self._lock:
            # Instances created by the API or earlier churn steps come up now.
            for iid in sorted(self._maturing):
                inst = self._instances[iid]
                if inst.status == "pending" and inst.ready_at is not None:
                    self._set_status(inst, "running")
                    inst.ready_at = None
                    events.append(ChurnEvent("started", inst.id, "pending->running"))
            self._maturing.clear()
            for _ in range(rng.randint(0, 2)):
                env, role = pick_env(rng), rng.choice(_ROLES)
                plan = rng.choice(tuple(PLAN_SHAPES))
                inst = self.add_instance(
                    name=self._next_name(f"{env}-{role}"),
                    plan=plan,
                    region=rng.choice(REGIONS),
                    image_id=rng.choice(IMAGES),
                    tags={"team": rng.choice(_TEAMS), "env": env},
                )
                events.append(ChurnEvent("created", inst.id, inst.name))
            # Draw both samples before changing a status: the stopped ones to start are
            # those that were stopped before this step stopped some.
            to_stop = _sample(rng, self._by_rs.get((None, "running"), []), rng.randint(0, 2))
            to_start = _sample(rng, self._by_rs.get((None, "stopped"), []), rng.randint(0, 1))
            for iid in to_stop:
                self._set_status(self._instances[iid], "stopped")
                events.append(ChurnEvent("stopped", iid))
            for iid in to_start:
                self._set_status(self._instances[iid], "running")
                events.append(ChurnEvent("started", iid, "stopped->running"))
            if rng.random() < 0.3 and self._instances:
                iid = rng.choice(self._by_rs[ALL])
                old = self._instances[iid].name
                self._instances[iid].name = self._next_name(old.rsplit("-", 1)[0])
                events.append(ChurnEvent("renamed", iid, f"{old}->{self._instances[iid].name}"))
            for iid in _sample(rng, self._by_rs[ALL], rng.randint(0, 2)):
                self._index_remove(self._instances.pop(iid))
                self._maturing.discard(iid)
                events.append(ChurnEvent("deleted", iid))
            for bid in _sample(rng, self._bucket_ids, rng.randint(1, 3)):
                b = self._buckets[bid]
                grown = max(1024, int(b.size_bytes * rng.uniform(0.001, 0.05)))
                b.size_bytes += grown
                events.append(ChurnEvent("grown", bid, f"+{grown}"))
            if self._buckets and rng.random() < 0.3:
                b = self._buckets[rng.choice(self._bucket_ids)]
                b.access = "private" if b.access != "private" else "public"
                events.append(ChurnEvent("access", b.id, b.access))
        return events

    # -- indexes ---------------------------------------------------------------------

    def _ids(self, key: FilterKey) -> list[str]:
        """The sorted ids matching ``key``: a live index, never to be mutated or kept."""
        region, status, tags = key
        if not tags:
            return self._by_rs.get((region, status), [])
        ids = self._composite.get(key)
        if ids is not None:
            self._composite.move_to_end(key)
            return ids
        # Tags are rare on the page path (the crawler does not filter by them), so their
        # index is built on first use from the region/status one; then kept current.
        instances = self._instances
        base = self._by_rs.get((region, status), [])  # matches region and status exactly
        if len(tags) == 1:
            ((name, value),) = tags
            ids = [iid for iid in base if instances[iid].tags.get(name) == value]
        else:
            ids = [iid for iid in base if matches(instances[iid], key)]
        self._composite[key] = ids
        if len(self._composite) > _COMPOSITE_CACHE:
            self._composite.popitem(last=False)
        return ids

    def _index_add(self, inst: Instance) -> None:
        iid = inst.id
        for rs in rs_keys(inst.region, inst.status):
            insort(self._by_rs.setdefault(rs, []), iid)
        for key, ids in self._composite.items():
            if matches(inst, key):
                insort(ids, iid)

    def _index_remove(self, inst: Instance) -> None:
        iid = inst.id
        for rs in rs_keys(inst.region, inst.status):
            discard(self._by_rs[rs], iid)
        for key, ids in self._composite.items():
            if matches(inst, key):
                discard(ids, iid)

    def _set_status(self, inst: Instance, status: str) -> None:
        """Change a status and move the instance between the indexes that depend on it."""
        old = inst.status
        if old == status:
            return
        iid, region = inst.id, inst.region
        before = [key for key in self._composite if matches(inst, key)]
        for rs in ((None, old), (region, old)):
            discard(self._by_rs[rs], iid)
        inst.status = status
        for rs in ((None, status), (region, status)):
            insort(self._by_rs.setdefault(rs, []), iid)
        for key in before:
            if not matches(inst, key):
                discard(self._composite[key], iid)
        for key, ids in self._composite.items():
            if key not in before and matches(inst, key):
                insort(ids, iid)

    # -- helpers ---------------------------------------------------------------------

    def _settle(self) -> None:
        if not self._maturing:
            return
        now = wall_seconds(self._clock)
        for iid in list(self._maturing):
            inst = self._instances[iid]
            if inst.ready_at is None or inst.ready_at <= now:
                if inst.status == "pending":
                    self._set_status(inst, "running")
                inst.ready_at = None
                self._maturing.discard(iid)

    def _new_instance_id(self) -> str:
        while True:
            candidate = "inst_" + "".join(self._id_rng.choices(_ID_ALPHABET, k=8))
            if candidate not in self._instances:
                return candidate

    def _bump_counter(self, name: str) -> None:
        stem, _, num = name.rpartition("-")
        if stem and num.isdigit():
            self._name_counters[stem] = max(self._name_counters.get(stem, 0), int(num))

    def _next_name(self, stem: str) -> str:
        n = self._name_counters.get(stem, 0) + 1
        self._name_counters[stem] = n
        return f"{stem}-{n:02d}"


def _sample(rng: random.Random, population: Sequence[str], k: int) -> list[str]:
    # Sampling the sequence itself draws exactly what sampling a copy of it would.
    return rng.sample(population, min(k, len(population)))
