"""The simulator's page path (``Fleet.listing``) answers like ``query_instances``."""

from __future__ import annotations

from nexus_audit.simulator.clock import ManualClock
from nexus_audit.simulator.fleet import Fleet


def _ids(items: list) -> list[str]:  # type: ignore[type-arg]
    return [i.id for i in items]


def test_listing_matches_query_through_churn_and_filters() -> None:
    """Through creates, deletes, status changes and maturing pendings, both agree."""
    clock = ManualClock(1_700_000_000.0)
    fleet = Fleet.generate(seed=3, instances=300, buckets=5, clock=clock, pending_seconds=5)
    for step in range(30):
        fleet.churn_step()
        if step % 7 == 0:
            fleet.add_instance(name=f"api-{step}", plan="nano", region="eu-west-1")
        clock.advance(2)
        for kwargs in ({}, {"region": "eu-west-1"}, {"status": "pending"},
                       {"status": "running", "tags": {"env": "prod"}}):
            assert _ids(fleet.listing(**kwargs)) == _ids(fleet.query_instances(**kwargs))


def test_pending_instances_come_up_after_their_delay() -> None:
    """An instance created pending is running once pending_seconds have passed."""
    clock = ManualClock(1_700_000_000.0)
    fleet = Fleet.generate(seed=1, instances=0, buckets=0, clock=clock, pending_seconds=5)
    new = fleet.add_instance(name="web-01", plan="micro", region="us-east-1")
    assert fleet.listing()[0].status == "pending"
    clock.advance(5)
    assert [i.status for i in fleet.listing()] == ["running"]
    assert fleet.get_instance(new.id).status == "running"  # type: ignore[union-attr]
