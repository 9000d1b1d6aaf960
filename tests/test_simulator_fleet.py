"""The synthetic fleet: seeded generation, mutations, churn (no HTTP)."""

from __future__ import annotations

import re

from nexus_audit.simulator import PLAN_SHAPES, REGIONS, Fleet, ManualClock


def _snapshot(fleet: Fleet) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    return (
        [i.to_json() for i in fleet.query_instances()],
        [b.to_json() for b in fleet.query_buckets()],
    )


def test_same_seed_gives_same_fleet() -> None:
    """Two fleets from one seed are identical; another seed gives another fleet."""
    a = Fleet.generate(seed=7, instances=300, buckets=30, clock=ManualClock())
    b = Fleet.generate(seed=7, instances=300, buckets=30, clock=ManualClock())
    c = Fleet.generate(seed=8, instances=300, buckets=30, clock=ManualClock())
    assert _snapshot(a) == _snapshot(b)
    assert _snapshot(a) != _snapshot(c)


def test_same_seed_gives_same_churn() -> None:
    """Churn is seeded too: the same steps on the same seed give the same fleet."""
    fleets = [Fleet.generate(seed=3, instances=50, buckets=10, clock=ManualClock()) for _ in "ab"]
    for fleet in fleets:
        for _ in range(20):
            fleet.churn_step()
    assert _snapshot(fleets[0]) == _snapshot(fleets[1])


def test_fleet_looks_like_a_real_account() -> None:
    """Regions, names, plans, tags, statuses and buckets have the documented variety."""
    fleet = Fleet.generate(seed=1, instances=1000, buckets=50, clock=ManualClock())
    insts = fleet.query_instances()
    assert len(insts) == len({i.id for i in insts}) == 1000
    assert {i.region for i in insts} == set(REGIONS)
    assert all(re.fullmatch(r"inst_[a-z0-9]{8}", i.id) for i in insts)
    assert all(re.fullmatch(r"(prod|staging|dev|test)-[a-z]+-\d{2,}", i.name) for i in insts)
    statuses = [i.status for i in insts]
    assert statuses.count("running") > statuses.count("stopped") > statuses.count("pending") > 0
    no_plan = [i for i in insts if i.plan is None]
    assert 0 < len(no_plan) < 100
    assert all("plan" not in i.to_json() for i in no_plan)
    assert all((i.cpu, i.memory_gb) == PLAN_SHAPES[i.plan] for i in insts if i.plan)
    assert any("team" not in i.tags for i in insts)
    assert any("env" not in i.tags for i in insts)
    assert all(str(i.to_json()["created_at"]) < "2025-01-01" for i in insts)

    buckets = fleet.query_buckets()
    assert len(buckets) == 50
    assert all(re.fullmatch(r"bk_[a-z]+-[a-z]+-\d{2}", b.id) for b in buckets)
    access = [b.access for b in buckets]
    assert access.count("public-read") == 1
    assert access.count("private") > access.count("public") > 0
    sizes = [b.size_bytes for b in buckets]
    assert min(sizes) < 10**6
    assert max(sizes) > 10**11


def test_plan_shapes() -> None:
    """Plans set cpu and memory as the product defines them."""
    assert dict(PLAN_SHAPES) == {
        "nano": (1, 1),
        "micro": (2, 2),
        "standard": (4, 16),
        "performance": (16, 64),
    }


def test_created_instance_is_pending_until_time_passes() -> None:
    """A new instance is pending, then running once ``pending_seconds`` have passed."""
    clock = ManualClock()
    fleet = Fleet(clock=clock, pending_seconds=10)
    inst = fleet.add_instance(name="prod-web-99", plan="standard", region="eu-west-1")
    assert (inst.status, inst.cpu, inst.memory_gb) == ("pending", 4, 16)
    clock.advance(9)
    assert fleet.get_instance(inst.id).status == "pending"  # type: ignore[union-attr]
    clock.advance(1)
    assert fleet.get_instance(inst.id).status == "running"  # type: ignore[union-attr]


def test_churn_promotes_pending_and_changes_everything() -> None:
    """Over some steps churn creates, starts, stops, deletes, renames, grows and flips."""
    fleet = Fleet.generate(seed=5, instances=40, buckets=8, clock=ManualClock())
    made = fleet.add_instance(name="dev-api-77", plan="nano", region="us-east-1")
    kinds: set[str] = set()
    first = fleet.churn_step()
    assert any(e.kind == "started" and e.resource_id == made.id for e in first)
    kinds.update(e.kind for e in first)
    for _ in range(30):
        kinds.update(e.kind for e in fleet.churn_step())
    assert kinds == {"created", "started", "stopped", "deleted", "renamed", "grown", "access"}


def test_queries_return_copies_and_filter() -> None:
    """Filters combine with AND; mutating a returned copy does not change the fleet."""
    fleet = Fleet.generate(seed=2, instances=200, buckets=5, clock=ManualClock())
    hits = fleet.query_instances(region="eu-west-1", status="running", tags={"env": "prod"})
    assert hits
    assert all(
        (i.region, i.status, i.tags.get("env")) == ("eu-west-1", "running", "prod") for i in hits
    )
    hits[0].name = "changed"
    assert fleet.get_instance(hits[0].id).name != "changed"  # type: ignore[union-attr]
    fleet.set_bucket_access(fleet.query_buckets()[0].id, "authenticated-read")
    assert fleet.query_buckets()[0].access == "authenticated-read"
