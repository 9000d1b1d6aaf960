"""A history for the HTML report's tests: two weeks of a small fleet that churns, with
exposures, stale instances, a coverage gap, and an account whose ids and tags are hostile
(markup, quotes, control and bidi characters), as an API under attack could send them."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nexus_audit.audit.report import Report, build_report
from nexus_audit.domain.model import Bucket, CrawlSummary, Instance, Kind
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import Window
from nexus_audit.history.store import Store

START = datetime(2026, 2, 1, tzinfo=UTC)
DAYS = 14
UNTIL = START + timedelta(days=DAYS)
WINDOW = Window(START, UNTIL)
H = timedelta(hours=1)

#: Each of these, rendered, must read as text and run nothing.
SCRIPT_ID = "<script>window.__pwned = 1</script>"
QUOTE_NAME = "\"'><img src=x onerror=\"window.__pwned = 2\">"
CONTROL_BUCKET = "b-\x1b[31mred\x07\u202egnp.exe<svg onload=window.__pwned=3>"
TAG_VALUE = "</style></svg><script>window.__pwned = 4</script>"
HOSTILE = (SCRIPT_ID, QUOTE_NAME, CONTROL_BUCKET, TAG_VALUE)


def _inst(ident: str, rng: random.Random, *, name: str | None = None, status: str = "running",
          tags: str = '{"team":"core"}') -> Instance:
    plan = rng.choice(("micro", "standard", "nano"))
    cpu, mem = {"micro": (2, 2.0), "standard": (4, 16.0), "nano": (1, 1.0)}[plan]
    return Instance(ident, name or ident, status, rng.choice(("eu-west-1", "us-east-1")),
                    cpu, mem, plan, tags, "2026-01-01T00:00:00Z", "{}")


def _bucket(ident: str, rng: random.Random, access: str = "private") -> Bucket:
    return Bucket(ident, rng.choice(("eu-west-1", "us-east-1")),
                  rng.randrange(1, 50) * 10**9, access, "2026-01-01T00:00:00Z", "{}", "{}")


def _commit(store: Store, account: str, at: datetime, instances: list[Instance],
            buckets: list[Bucket]) -> None:
    kinds: tuple[Kind, ...] = ("instances", "buckets")
    staged = store.begin_crawl(account, list(kinds), at - timedelta(seconds=20))
    staged.add_instances(instances)
    staged.add_buckets(buckets)
    store.commit(staged, CrawlSummary(
        account=account, kinds=kinds, started_at=at - timedelta(seconds=20), finished_at=at,
        status="succeeded", instances=len(instances), buckets=len(buckets), requests=2,
        requests_by_endpoint={"GET /instances": {"200": 1}, "GET /buckets": {"200": 1}}))


def make_history(path: Path) -> Store:
    """Crawls every 3 hours for two weeks (none on day 9: a coverage gap) of two accounts."""
    store = Store(path)
    store.migrate()
    rng = random.Random(21)
    prod = {f"i-{n:03d}": _inst(f"i-{n:03d}", rng) for n in range(24)}
    prod_buckets = {f"b-{n:02d}": _bucket(f"b-{n:02d}", rng) for n in range(8)}
    # Stopped all along (a stale instance); its tags change on day 7 (drift).
    evil = [_inst(SCRIPT_ID, rng, name=QUOTE_NAME, status="stopped"),
            _inst("i-evil-2", rng, status="stopped")]
    serial = 24
    at = START + 2 * H
    while at < UNTIL:
        if at.day == START.day + 8:
            at += 3 * H
            continue
        for ident in rng.sample(sorted(prod), k=2):
            old = prod[ident]
            prod[ident] = old._replace(status=rng.choice(("running", "running", "stopped")))
        if rng.random() < 0.3:
            prod.pop(rng.choice(sorted(prod)))
            prod[f"i-{serial:03d}"] = _inst(f"i-{serial:03d}", rng)
            serial += 1
        for ident in rng.sample(sorted(prod_buckets), k=2):
            b = prod_buckets[ident]
            prod_buckets[ident] = b._replace(size_bytes=b.size_bytes + rng.randrange(10**9))
        # b-03 is public on days 3 to 5; b-05 from day 10 on (still at the end).
        day = (at - START).days
        prod_buckets["b-03"] = prod_buckets["b-03"]._replace(
            access="public-read" if 3 <= day < 6 else "private")
        prod_buckets["b-05"] = prod_buckets["b-05"]._replace(
            access="public" if day >= 10 else "private")
        _commit(store, "prod", at, list(prod.values()), list(prod_buckets.values()))
        if day == 7:
            evil[0] = evil[0]._replace(tags='{"owner":' + _json_text(TAG_VALUE) + "}")
        _commit(store, "evil", at + timedelta(minutes=1), evil,
                [_bucket("b-evil-ok", random.Random(1)),
                 Bucket(CONTROL_BUCKET, "eu-west-1", 7 * 10**9, "public-read",
                        "2026-01-01T00:00:00Z", "{}", "{}")])
        at += 3 * H
    return store


def _json_text(value: str) -> str:
    return json.dumps(value)


def report(store: Store, *, series: bool = True) -> Report:
    """The two weeks' report with the shipped example prices."""
    return build_report(store, WINDOW, stale_after=timedelta(days=2),
                        pending_stale_after=H, max_gap_instances=6 * H,
                        max_gap_buckets=6 * H, pricing=load_pricing(), now=UNTIL,
                        series=series)
