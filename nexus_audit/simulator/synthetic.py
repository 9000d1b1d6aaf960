"""The synthetic records: constants of the product, Instance and Bucket, seeded generation.

Randomness comes from the ``random.Random`` handed in, never the global generator, so
the same seed always gives the same records.
"""

from __future__ import annotations

import gc
import random
import string
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from types import MappingProxyType
from typing import Final

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


def tag_match(tags: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """True when every wanted ``key: value`` pair is present in ``tags``."""
    return all(tags.get(k) == v for k, v in wanted.items())


def copy_instance(inst: Instance) -> Instance:
    """A copy that shares nothing mutable with ``inst``."""
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


def copy_bucket(b: Bucket) -> Bucket:
    """A copy that shares nothing mutable with ``b``."""
    return Bucket(b.id, b.region, b.size_bytes, b.access, b.created_at, dict(b.tags))


def pick_env(rng: random.Random) -> str:
    """An environment name, weighted as a real account's are."""
    names = [e for e, _ in _ENVS]
    weights = [w for _, w in _ENVS]
    return rng.choices(names, weights=weights)[0]


def random_instances(rng: random.Random, count: int) -> tuple[list[Instance], dict[str, int]]:
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


def random_buckets(rng: random.Random, count: int) -> list[Bucket]:
    counters: dict[str, int] = {}
    out: list[Bucket] = []
    public_read_at = rng.randrange(count) if count else -1
    for index in range(count):
        env, purpose = pick_env(rng), rng.choice(_BUCKET_PURPOSES)
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


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a bulk allocation (no cycles are made)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
