"""The synthetic CloudNexus fleet: seeded generation, queries, mutations and churn.

Pure logic: no HTTP here. Time comes from an injected clock; randomness from
``random.Random`` instances seeded from the fleet seed, never the global generator,
so the same seed always gives the same fleet and the same churn sequence.
"""

from __future__ import annotations

import copy
import random
import string
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

    Queries return copies sorted by id, so callers never see later mutations.
    """

    def __init__(
        self,
        instances: Iterable[Instance] = (),
        buckets: Iterable[Bucket] = (),
        *,
        seed: int = 0,
        clock: Clock | None = None,
        pending_seconds: float = 10.0,
    ) -> None:
        self._instances: dict[str, Instance] = {i.id: i for i in instances}
        self._buckets: dict[str, Bucket] = {b.id: b for b in buckets}
        self._clock: Clock = clock or SystemClock()
        self._pending_seconds = pending_seconds
        # Separate streams so that adding instances does not shift the churn sequence.
        self._id_rng = random.Random(f"{seed}:ids")
        self._churn_rng = random.Random(f"{seed}:churn")
        self._name_counters: dict[str, int] = {}
        for inst in self._instances.values():
            self._bump_counter(inst.name)
        # Listing is the hot path (one call per page): keep the id-sorted order and the
        # set of instances still coming up, instead of sorting and scanning every time.
        self._order: list[Instance] | None = None
        self._maturing: set[str] = {
            i.id for i in self._instances.values() if i.ready_at is not None
        }
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
        counters: dict[str, int] = {}
        taken: set[str] = set()
        insts = [_random_instance(rng, counters, taken) for _ in range(instances)]
        bucket_list = _random_buckets(rng, buckets)
        return cls(
            insts,
            bucket_list,
            seed=seed,
            clock=clock,
            pending_seconds=pending_seconds,
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
            found = [
                copy.deepcopy(i)
                for i in self._instances.values()
                if (region is None or i.region == region)
                and (status is None or i.status == status)
                and (not tags or tag_match(i.tags, tags))
            ]
        found.sort(key=lambda i: i.id)
        return found

    def listing(
        self,
        *,
        region: str | None = None,
        status: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[Instance]:
        """Like :meth:`query_instances` but without copies: the server's page path.

        The instances are the live objects: serialize the page at once and never mutate
        them. Without filters this costs one list copy, not a sort and a deep copy.
        """
        with self._lock:
            self._settle()
            if self._order is None:
                self._order = sorted(self._instances.values(), key=lambda i: i.id)
            if region is None and status is None and not tags:
                return list(self._order)
            return [
                i
                for i in self._order
                if (region is None or i.region == region)
                and (status is None or i.status == status)
                and (not tags or tag_match(i.tags, tags))
            ]

    def instance_ids(self) -> list[str]:
        """All instance ids, sorted."""
        with self._lock:
            return sorted(self._instances)

    def get_instance(self, instance_id: str) -> Instance | None:
        """A copy of one instance, or None."""
        with self._lock:
            self._settle()
            inst = self._instances.get(instance_id)
            return copy.deepcopy(inst) if inst else None

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
            self._order = None
            if inst.ready_at is not None:
                self._maturing.add(new_id)
            self._bump_counter(name)
            return copy.deepcopy(inst)

    def delete_instance(self, instance_id: str) -> Instance:
        """Remove an instance and return it; ``KeyError`` if there is none."""
        with self._lock:
            inst = self._instances.pop(instance_id)
            self._order = None
            self._maturing.discard(instance_id)
            return inst

    def set_instance_status(self, instance_id: str, status: str) -> None:
        """Force an instance's status; ``KeyError`` if there is none."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._lock:
            inst = self._instances[instance_id]
            inst.status = status
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
            found = [copy.deepcopy(b) for b in self._buckets.values()]
        found.sort(key=lambda b: b.id)
        return found

    def get_bucket(self, bucket_id: str) -> Bucket | None:
        """A copy of one bucket, or None."""
        with self._lock:
            b = self._buckets.get(bucket_id)
            return copy.deepcopy(b) if b else None

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
            return copy.deepcopy(b)

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
            return self._buckets.pop(bucket_id)

    # -- churn -----------------------------------------------------------------------

    def churn_step(self) -> list[ChurnEvent]:
        """One seeded step of change: creates, starts, stops, deletes, renames, grows, flips."""
        rng = self._churn_rng
        events: list[ChurnEvent] = []
        with self._lock:
            # Instances created by the API or earlier churn steps come up now.
            for iid in sorted(self._maturing):
                inst = self._instances[iid]
                if inst.status == "pending" and inst.ready_at is not None:
                    inst.status, inst.ready_at = "running", None
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
            by_status = self._ids_by_status()
            for iid in _sample(rng, by_status["running"], rng.randint(0, 2)):
                self._instances[iid].status = "stopped"
                events.append(ChurnEvent("stopped", iid))
            for iid in _sample(rng, by_status["stopped"], rng.randint(0, 1)):
                self._instances[iid].status = "running"
                events.append(ChurnEvent("started", iid, "stopped->running"))
            if rng.random() < 0.3 and self._instances:
                iid = rng.choice(sorted(self._instances))
                old = self._instances[iid].name
                self._instances[iid].name = self._next_name(old.rsplit("-", 1)[0])
                events.append(ChurnEvent("renamed", iid, f"{old}->{self._instances[iid].name}"))
            for iid in _sample(rng, sorted(self._instances), rng.randint(0, 2)):
                del self._instances[iid]
                self._order = None
                self._maturing.discard(iid)
                events.append(ChurnEvent("deleted", iid))
            for bid in _sample(rng, sorted(self._buckets), rng.randint(1, 3)):
                b = self._buckets[bid]
                grown = max(1024, int(b.size_bytes * rng.uniform(0.001, 0.05)))
                b.size_bytes += grown
                events.append(ChurnEvent("grown", bid, f"+{grown}"))
            if self._buckets and rng.random() < 0.3:
                b = self._buckets[rng.choice(sorted(self._buckets))]
                b.access = "private" if b.access != "private" else "public"
                events.append(ChurnEvent("access", b.id, b.access))
        return events

    # -- helpers ---------------------------------------------------------------------

    def _settle(self) -> None:
        now = self._clock.time()
        for iid in list(self._maturing):
            inst = self._instances[iid]
            if inst.ready_at is None or inst.ready_at <= now:
                if inst.status == "pending":
                    inst.status = "running"
                inst.ready_at = None
                self._maturing.discard(iid)

    def _ids_by_status(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {s: [] for s in STATUSES}
        for iid in sorted(self._instances):
            out[self._instances[iid].status].append(iid)
        return out

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
    return rng.sample(list(population), min(k, len(population)))


def _pick_env(rng: random.Random) -> str:
    names = [e for e, _ in _ENVS]
    weights = [w for _, w in _ENVS]
    return rng.choices(names, weights=weights)[0]


def _random_instance(rng: random.Random, counters: dict[str, int], taken: set[str]) -> Instance:
    while True:
        iid = "inst_" + "".join(rng.choices(_ID_ALPHABET, k=8))
        if iid not in taken:
            taken.add(iid)
            break
    env, role = _pick_env(rng), rng.choice(_ROLES)
    stem = f"{env}-{role}"
    counters[stem] = counters.get(stem, 0) + 1
    tags = {"team": rng.choice(_TEAMS), "env": env}
    if rng.random() < 0.1:
        tags["cost-center"] = f"cc-{rng.randint(100, 999)}"
    # A few records miss a tag, to exercise the client's handling of partial tags.
    roll = rng.random()
    if roll < 0.03:
        del tags["team"]
    elif roll < 0.05:
        del tags["env"]
    chosen = rng.choices(tuple(PLAN_SHAPES), weights=(2, 4, 5, 1))[0]
    cpu, mem = PLAN_SHAPES[chosen]
    plan: str | None = chosen
    if rng.random() < 0.04:
        # No plan field: the client must fall back to matching cpu/memory.
        plan = None
        if rng.random() < 0.5:
            cpu, mem = rng.choice(_ODD_SHAPES)
    status = rng.choices(STATUSES, weights=(85, 11, 4))[0]
    return Instance(
        id=iid,
        name=f"{stem}-{counters[stem]:02d}",
        status=status,
        region=rng.choice(REGIONS),
        cpu=cpu,
        memory_gb=mem,
        plan=plan,
        tags=tags,
        image_id=rng.choice(IMAGES),
        created_at=FLEET_EPOCH - rng.uniform(1, 730) * _DAY,
    )


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
