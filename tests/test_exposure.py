"""One definition of "exposed": the report, /metrics, findings and the upload guard agree.

The rule (``nexus_audit.domain.exposure``): a bucket is private only when its access is exactly
``private``; anything else, NULL included, is exposed. Histories are committed through the
store's own API into ``tmp_path``.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from nexus_audit.audit.findings import evaluate_history
from nexus_audit.domain.exposure import MACRO_SQL, PRIVATE, install, is_exposed, sql_expression
from nexus_audit.domain.model import Bucket
from nexus_audit.domain.policy import parse_policy
from nexus_audit.domain.timeutil import Window
from nexus_audit.history.store import Store
from nexus_audit.metrics import InventoryCollector, SnapshotHolder, build_snapshot
from nexus_audit.output.archive import ExposedBucketError, check_bucket
from tests.test_queries import T0, H, report
from tests.test_store import bucket, crawl

#: Values that read as "private" to a person or a lenient parser, and must not count so.
LOOKALIKES = [
    "Private", "PRIVATE", "private\n", "private\t", "private\r\n", " private", "private ",
    "\tprivate", "\u00a0private", "private\u3000",
    "\u0440rivate",  # Cyrillic er
    "priv\u0430te",  # Cyrillic a
    "pr\u0456vate",  # Cyrillic i
    "\uff50rivate",  # fullwidth p
    "private\u200b", "\u200bprivate", "pri\u200dvate", "\ufeffprivate", "private\u0301",
    "private\x00", "", "public", "public-read", "shared-with-partners",
]
_AROUND = st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2028\u200b\u200c\u200d\u2060\ufeff",
                  max_size=2)
ACCESS = st.one_of(
    st.just(PRIVATE),
    st.sampled_from(LOOKALIKES),
    st.builds(lambda a, core, b: a + core + b, _AROUND,
              st.sampled_from([PRIVATE, PRIVATE.upper(), PRIVATE.title()]), _AROUND),
    st.text(max_size=10),
    st.none(),  # the store keeps NULL (a row written by another tool, an old schema)
)
_POLICY = parse_policy(b"", "empty-policy.toml")
_files = itertools.count()


def exposed_everywhere(store: Store, ids: list[str]) -> dict[str, dict[str, bool]]:
    """Per consumer, which of ``ids`` it calls exposed (the history has one bucket crawl)."""
    rep = report(store, T0 - H, T0 + H)
    found = evaluate_history(store, _POLICY, Window(T0 - H, T0 + H))
    states = store.latest()
    registry = CollectorRegistry(auto_describe=True)
    registry.register(InventoryCollector(SnapshotHolder(build_snapshot(states, generation=1))))
    public_now = {b.id for b in rep.public_buckets}
    exposures = {e.id for e in rep.exposures}
    public_findings = {f.resource for f in found if f.rule == "bucket.public"}
    seen = {b.id: b for s in states for b in s.buckets}

    def metric(ident: str) -> bool:
        b = seen[ident]
        value = registry.get_sample_value("nexus_bucket_public", {
            "account": "acme", "bucket": ident, "region": b.region, "access": b.access or ""})
        assert value in (0.0, 1.0), (ident, value)
        return value == 1.0

    def guard(ident: str) -> bool:
        try:
            return check_bucket(states, "acme", ident) != "private"
        except ExposedBucketError:
            return True

    out = {"report.public_buckets": {i: i in public_now for i in ids},
           "report.exposures": {i: i in exposures for i in ids},
           "findings": {i: i in public_findings for i in ids},
           "metrics": {i: metric(i) for i in ids},
           "upload guard": {i: guard(i) for i in ids}}
    total = registry.get_sample_value("nexus_public_buckets", {"account": "acme"})
    out["metrics total"] = {"count": total == sum(out["metrics"].values())}
    return out


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(accesses=st.lists(ACCESS, min_size=1, max_size=8))
@example(accesses=[PRIVATE, None, *LOOKALIKES])
def test_every_consumer_agrees_on_each_access_value(tmp_path: Path,
                                                    accesses: list[str | None]) -> None:
    """For every access value, report, /metrics, findings and the upload guard call the
    bucket exposed exactly when the value is not the string ``private``."""
    store = Store(tmp_path / f"exposure-{next(_files)}.duckdb", lock_timeout=2.0)
    store.migrate()
    ids = [f"b-{n}" for n in range(len(accesses))]
    # The fields are typed str, but NULL is what another writer could have left.
    buckets = [Bucket(i, "eu-1", 10**9, a, None, "{}", "{}")  # type: ignore[arg-type]
               for i, a in zip(ids, accesses, strict=True)]
    crawl(store, T0, buckets=buckets)
    expected = {i: a != "private" for i, a in zip(ids, accesses, strict=True)}
    verdicts = exposed_everywhere(store, ids)
    store.close()
    for consumer, seen in verdicts.items():
        if consumer == "metrics total":
            assert seen == {"count": True}, consumer
        else:
            assert seen == expected, (consumer, accesses)


@pytest.mark.parametrize("access", [PRIVATE, None, *LOOKALIKES])
def test_sql_macro_matches_the_python_rule(access: str | None) -> None:
    """The macro, generated from the same constant, answers as the predicate does."""
    con = duckdb.connect(":memory:")
    install(con)
    row = con.execute("SELECT is_exposed($a), " + sql_expression("$a"), {"a": access}).fetchone()
    con.close()
    assert row == (is_exposed(access), is_exposed(access))
    assert is_exposed(access) is (access != "private")


def test_macro_is_installed_on_read_connections(tmp_path: Path) -> None:
    """Store.read() defines is_exposed, so every query may call it; NULL is exposed."""
    store = Store(tmp_path / "history.duckdb", lock_timeout=2.0)
    store.migrate()
    crawl(store, T0, buckets=[bucket("b-1", access="private\n"), bucket("b-2")])
    with store.read() as con:
        rows = con.execute("SELECT id, is_exposed(access) FROM bucket_versions "
                           "ORDER BY id").fetchall()
        assert con.execute("SELECT is_exposed(NULL)").fetchone() == (True,)
    assert rows == [("b-1", True), ("b-2", False)]
    assert "IS DISTINCT FROM 'private'" in MACRO_SQL


def test_whitespace_private_is_reported_and_refused(tmp_path: Path) -> None:
    """issue 17 item 1: "private\\n" was public in the report but private for /metrics and
    the upload guard; now it is exposed in both, and the report keeps the value as sent."""
    store = Store(tmp_path / "history.duckdb", lock_timeout=2.0)
    store.migrate()
    crawl(store, T0, buckets=[bucket("b-nl", access="private\n"),
                              bucket("b-tab", access="private\t")])
    rep = report(store, T0 - H, T0 + timedelta(minutes=1))
    assert [(b.id, b.access) for b in rep.public_buckets] == [("b-nl", "private\n"),
                                                              ("b-tab", "private\t")]
    with pytest.raises(ExposedBucketError, match=r"'private\\n'"):
        check_bucket(store.latest(), "acme", "b-nl")
