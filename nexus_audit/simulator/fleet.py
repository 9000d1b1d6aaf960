"""The synthetic CloudNexus fleet: seeded generation, queries, mutations and churn.

Pure logic: no HTTP here. Time comes from an injected clock; randomness from
``random.Random`` instances seeded from the fleet seed, never the global generator,
so the same seed always gives the same fleet and the same churn sequence.
"""

from __future__ import annotations

import gc
import random
import string
import threading
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate, chain
from types import MappingProxyType
from typing import Final

from .clock import Clock, SystemClock

PLAN_SHAPES: Final[Mapping[str, tuple[int, int]]] = MappingProxyType(
    {
        # plan: (vCPU, memory in GB)
        "nano": (1, 1),
        "micro": (2, 2),
        "standard": (4, 16),
        "performance": (16, 64),
    }
)
REGIONS: Final[tuple[str, ...]] = (
    "us-east-1",
    "us-west-2",
    "us-central1",
    "eu-west-1",
    "eu-west-2",
    "eu-central-1",
    "ap-south-1",
    "ap-northeast-1",
)
STATUSES: Final[tuple[str, ...]] = ("running", "stopped", "pending")
IMAGES: Final[tuple[str, ...]] = (
    "img_ubuntu2204_v3",
    "img_ubuntu2404_v1",
    "img_debian12_v2",
    "img_rocky9_v1",
)
# Every seeded created_at lies before this instant, so a fleet does not depend on today.
FLEET_EPOCH: Final[float] = datetime(2025, 1, 1, tzinfo=UTC).timestamp()

_ENVS: Final[tuple[tuple[str, float], ...]] = (
    ("prod", 0.45),
    ("staging", 0.25),
    ("dev", 0.2),
    ("test", 0.1),
)
_ROLES: Final[tuple[str, ...]] = (
    "web",
    "api",
    "worker",
    "db",
    "cache",
    "batch",
    "ml",
    "queue",
    "search",
    "gateway",
)
_TEAMS: Final[tuple[str, ...]] = (
    "platform",
    "payments",
    "data",
    "search",
    "identity",
    "growth",
    "ml",
)
_BUCKET_PURPOSES: Final[tuple[str, ...]] = (
    "assets",
    "logs",
    "backups",
    "uploads",
    "media",
    "artifacts",
    "reports",
    "exports",
    "datalake",
    "static",
)
# A few shapes that match no plan, to exercise the per-vCPU/per-GB price fallback.
_ODD_SHAPES: Final[tuple[tuple[int, int], ...]] = ((8, 32), (2, 8), (32, 128))
_ID_ALPHABET: Final[str] = string.ascii_lowercase + string.digits
_DAY: Final[float] = 86_400.0
_PLAN_WEIGHTS: Final[tuple[int, ...]] = (2, 4, 5, 1)
_STATUS_WEIGHTS: Final[tuple[int, ...]] = (85, 11, 4)
# How many composite filter sets (tags with anything else) keep an index of their own.
_COMPOSITE_CACHE: Final[int] = 64
_ALL: Final[tuple[None, None]] = (None, None)

#: A filter set: region, status, and tag pairs sorted by key.
FilterKey = tuple[str | None, str | None, tuple[tuple[str, str], ...]]


def iso_utc(ts: float) -> str:
    """Format unix seconds as ``2024-01-15T08:32:00Z`` (the API's time format)."""
    return datetime.fromtimestamp(int(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Instance:
    """One compute instance. ``plan`` None means the API omits the field."""

    id: str
    name: str
    status: str
    region: str
    cpu: int
    memory_gb: int
    plan: str | None
    tags: dict[str, str]
    image_id: str
    created_at: float
    ssh_keys: tuple[str, ...] = ()
    # Set for instances created through the API or churn: pending until then.
    ready_at: float | None = None

    def to_json(self) -> dict[str, object]:
        """The instance as the API returns it."""
        out: dict[str, object] = {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "region": self.region,
            "cpu": self.cpu,
            "memory_gb": self.memory_gb,
        }
        if self.plan is not None:
            out["plan"] = self.plan
        out["tags"] = dict(self.tags)
        out["image_id"] = self.image_id
        out["created_at"] = iso_utc(self.created_at)
        return out


@dataclass(slots=True)
class Bucket:
    """One storage bucket."""

    id: str
    region: str
    size_bytes: int
    access: str
    created_at: float
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The bucket as the API returns it."""
        return {
            "id": self.id,
            "region": self.region,
            "size_bytes": self.size_bytes,
            "access": self.access,
            "created_at": iso_utc(self.created_at),
            "tags": dict(self.tags),
        }


@dataclass(frozen=True, slots=True)
class ChurnEvent:
    """One change made by a churn step (for logs and tests)."""

    kind: str  # created|started|stopped|deleted|renamed|grown|access
    resource_id: str
    detail: str = ""


def tag_match(tags: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """True when every wanted ``key: value`` pair is present in ``tags``."""
    return all(tags.get(k) == v for k, v in wanted.items())


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
        self._by_rs = _build_indexes(self._instances)
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
        with _gc_paused():
            insts, counters = _random_instances(rng, instances)
            bucket_list = _random_buckets(rng, buckets)
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
            return [_copy_instance(self._instances[iid]) for iid in ids]

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
            return list(self._by_rs[_ALL])

    def get_instance(self, instance_id: str) -> Instance | None:
        """A copy of one instance, or None."""
        with self._lock:
            self._settle()
            inst = self._instances.get(instance_id)
            return _copy_instance(inst) if inst else None

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
            now = self._clock.time()
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
            return _copy_instance(inst)

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
            return [_copy_bucket(self._buckets[bid]) for bid in self._bucket_ids]

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
            return _copy_bucket(b) if b else None

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
            b = Bucket(bucket_id, region, size_bytes, access, self._clock.time(), dict(tags or {}))
            self._buckets[bucket_id] = b
            insort(self._bucket_ids, bucket_id)
            return _copy_bucket(b)

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

    def delete_bucket(self, bucket_id: str) -> Bucket:
        """Remove a bucket and return it; ``KeyError`` if there is none."""
        with self._lock:
            b = self._buckets.pop(bucket_id)
            _discard(self._bucket_ids, bucket_id)
            return b

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
                env, role = _pick_env(rng), rng.choice(_ROLES)
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
                iid = rng.choice(self._by_rs[_ALL])
                old = self._instances[iid].name
                self._instances[iid].name = self._next_name(old.rsplit("-", 1)[0])
                events.append(ChurnEvent("renamed", iid, f"{old}->{self._instances[iid].name}"))
            for iid in _sample(rng, self._by_rs[_ALL], rng.randint(0, 2)):
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
            ids = [iid for iid in base if _matches(instances[iid], key)]
        self._composite[key] = ids
        if len(self._composite) > _COMPOSITE_CACHE:
            self._composite.popitem(last=False)
        return ids

    def _index_add(self, inst: Instance) -> None:
        iid = inst.id
        for rs in _rs_keys(inst.region, inst.status):
            insort(self._by_rs.setdefault(rs, []), iid)
        for key, ids in self._composite.items():
            if _matches(inst, key):
                insort(ids, iid)

    def _index_remove(self, inst: Instance) -> None:
        iid = inst.id
        for rs in _rs_keys(inst.region, inst.status):
            _discard(self._by_rs[rs], iid)
        for key, ids in self._composite.items():
            if _matches(inst, key):
                _discard(ids, iid)

    def _set_status(self, inst: Instance, status: str) -> None:
        """Change a status and move the instance between the indexes that depend on it."""
        old = inst.status
        if old == status:
            return
        iid, region = inst.id, inst.region
        before = [key for key in self._composite if _matches(inst, key)]
        for rs in ((None, old), (region, old)):
            _discard(self._by_rs[rs], iid)
        inst.status = status
        for rs in ((None, status), (region, status)):
            insort(self._by_rs.setdefault(rs, []), iid)
        for key in before:
            if not _matches(inst, key):
                _discard(self._composite[key], iid)
        for key, ids in self._composite.items():
            if key not in before and _matches(inst, key):
                insort(ids, iid)

    # -- helpers ---------------------------------------------------------------------

    def _settle(self) -> None:
        if not self._maturing:
            return
        now = self._clock.time()
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


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a bulk allocation (no cycles are made)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def filter_key(
    region: str | None, status: str | None, tags: Mapping[str, str] | None
) -> FilterKey:
    """The canonical, hashable form of a filter set (tags sorted by key)."""
    return (region, status, tuple(sorted(tags.items())) if tags else ())


def _matches(inst: Instance, key: FilterKey) -> bool:
    region, status, tags = key
    return (
        (region is None or inst.region == region)
        and (status is None or inst.status == status)
        and all(inst.tags.get(k) == v for k, v in tags)
    )


def _rs_keys(region: str, status: str) -> tuple[tuple[str | None, str | None], ...]:
    return (_ALL, (region, None), (None, status), (region, status))


def _discard(ids: list[str], iid: str) -> None:
    at = bisect_left(ids, iid)
    if at < len(ids) and ids[at] == iid:
        del ids[at]


def _build_indexes(
    instances: Mapping[str, Instance],
) -> dict[tuple[str | None, str | None], list[str]]:
    """The region/status indexes over ``instances``: every list sorted by id."""
    by_combo: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
    # Walk in creation order (the order in memory), sort the small lists, then merge:
    # at a million instances this is several times faster than walking sorted ids.
    for inst in instances.values():
        by_combo[inst.region, inst.status].append(inst.id)
    regions: defaultdict[str, list[list[str]]] = defaultdict(list)
    statuses: defaultdict[str, list[list[str]]] = defaultdict(list)
    by_rs: dict[tuple[str | None, str | None], list[str]] = {}
    for (region, status), ids in by_combo.items():
        ids.sort()
        by_rs[(region, status)] = ids
        regions[region].append(ids)
        statuses[status].append(ids)
    # Sorting concatenated sorted runs is a merge (timsort finds the runs).
    for region, runs in regions.items():
        by_rs[(region, None)] = sorted(chain.from_iterable(runs))
    for status, runs in statuses.items():
        by_rs[(None, status)] = sorted(chain.from_iterable(runs))
    by_rs[_ALL] = sorted(chain.from_iterable(by_combo.values()))
    return by_rs


def _copy_instance(inst: Instance) -> Instance:
    # Every field but tags is immutable, so a shallow copy with its own tags is a deep one.
    return Instance(
        id=inst.id,
        name=inst.name,
        status=inst.status,
        region=inst.region,
        cpu=inst.cpu,
        memory_gb=inst.memory_gb,
        plan=inst.plan,
        tags=dict(inst.tags),
        image_id=inst.image_id,
        created_at=inst.created_at,
        ssh_keys=inst.ssh_keys,
        ready_at=inst.ready_at,
    )


def _copy_bucket(b: Bucket) -> Bucket:
    return Bucket(b.id, b.region, b.size_bytes, b.access, b.created_at, dict(b.tags))


def _sample(rng: random.Random, population: Sequence[str], k: int) -> list[str]:
    # Sampling the sequence itself draws exactly what sampling a copy of it would.
    return rng.sample(population, min(k, len(population)))


def _pick_env(rng: random.Random) -> str:
    names = [e for e, _ in _ENVS]
    weights = [w for _, w in _ENVS]
    return rng.choices(names, weights=weights)[0]


def _random_instances(rng: random.Random, count: int) -> tuple[list[Instance], dict[str, int]]:
    """``count`` seeded instances and the name counters they leave.

    Written as ``Random.choices``, ``choice``, ``randint`` and ``uniform`` calls per
    instance this is readable but slow; here the same calls to ``random()`` and
    ``getrandbits()`` are made in the same order, inlined, so that a million instances
    take seconds and a seed gives the fleet it always gave (tests keep the readable
    form as the reference). Identical tag sets share one dict, which nothing mutates.
    """
    rand, bits = rng.random, rng.getrandbits
    alphabet, n_alpha = _ID_ALPHABET, float(len(_ID_ALPHABET))
    env_names = [e for e, _ in _ENVS]
    env_cum = list(accumulate(w for _, w in _ENVS))
    env_total, env_hi = env_cum[-1] + 0.0, len(env_cum) - 1
    plans = tuple(PLAN_SHAPES)
    plan_cum = list(accumulate(_PLAN_WEIGHTS))
    plan_total, plan_hi = plan_cum[-1] + 0.0, len(plan_cum) - 1
    status_cum = list(accumulate(_STATUS_WEIGHTS))
    status_total, status_hi = status_cum[-1] + 0.0, len(status_cum) - 1

    def below(n: int) -> int:  # Random._randbelow_with_getrandbits
        k = n.bit_length()
        r = bits(k)
        while r >= n:
            r = bits(k)
        return r

    n_roles, n_teams, n_odd = len(_ROLES), len(_TEAMS), len(_ODD_SHAPES)
    n_regions, n_images = len(REGIONS), len(IMAGES)
    counters: dict[str, int] = {}
    taken: set[str] = set()
    shared_tags: dict[tuple[str, str, str | None, int], dict[str, str]] = {}
    out: list[Instance] = []
    append = out.append
    for _ in range(count):
        while True:
            iid = "inst_" + "".join([alphabet[int(rand() * n_alpha)] for _ in range(8)])
            if iid not in taken:
                taken.add(iid)
                break
        env = env_names[bisect_right(env_cum, rand() * env_total, 0, env_hi)]
        role = _ROLES[below(n_roles)]
        stem = f"{env}-{role}"
        number = counters[stem] = counters.get(stem, 0) + 1
        team = _TEAMS[below(n_teams)]
        cost_center = f"cc-{100 + below(900)}" if rand() < 0.1 else None
        roll = rand()
        missing = 1 if roll < 0.03 else 2 if roll < 0.05 else 0
        tag_key = (team, env, cost_center, missing)
        tags = shared_tags.get(tag_key)
        if tags is None:
            tags = {"team": team, "env": env}
            if cost_center is not None:
                tags["cost-center"] = cost_center
            if missing == 1:
                del tags["team"]
            elif missing == 2:
                del tags["env"]
            shared_tags[tag_key] = tags
        chosen = plans[bisect_right(plan_cum, rand() * plan_total, 0, plan_hi)]
        cpu, mem = PLAN_SHAPES[chosen]
        plan: str | None = chosen
        if rand() < 0.04:
            plan = None
            if rand() < 0.5:
                cpu, mem = _ODD_SHAPES[below(n_odd)]
        status = STATUSES[bisect_right(status_cum, rand() * status_total, 0, status_hi)]
        region = REGIONS[below(n_regions)]
        image = IMAGES[below(n_images)]
        created = FLEET_EPOCH - (1 + 729 * rand()) * _DAY
        append(
            Instance(iid, f"{stem}-{number:02d}", status, region, cpu, mem, plan, tags, image,
                     created)
        )
    return out, counters


def _random_buckets(rng: random.Random, count: int) -> list[Bucket]:
    counters: dict[str, int] = {}
    out: list[Bucket] = []
    public_read_at = rng.randrange(count) if count else -1
    for index in range(count):
        env, purpose = _pick_env(rng), rng.choice(_BUCKET_PURPOSES)
        stem = f"{env}-{purpose}"
        counters[stem] = counters.get(stem, 0) + 1
        access = "public" if rng.random() < 0.15 else "private"
        if index == public_read_at:
            access = "public-read"
        out.append(
            Bucket(
                id=f"bk_{stem}-{counters[stem]:02d}",
                region=rng.choice(REGIONS),
                # Log-uniform from about a KB to a few TB.
                size_bytes=int(10 ** rng.uniform(3, 12.6)),
                access=access,
                created_at=FLEET_EPOCH - rng.uniform(1, 1000) * _DAY,
                tags={"team": rng.choice(_TEAMS), "env": env},
            )
        )
    return out
