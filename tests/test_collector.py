"""A crawl's collector takes an answer's items as a whole exactly as it would take them
one by one, and a page's key test redacts exactly what a test per record does."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_audit.api.untrusted import redact_fields, redact_page
from nexus_audit.config import AccountConfig, Secret
from nexus_audit.crawl.collector import Collector
from nexus_audit.domain.model import Instance, instance_from_api

KEY = "nx_test_sk_collector"


class FakeClient:
    """What a collector asks of the client: the account's key and the invalid counter."""

    def __init__(self, key: str) -> None:
        self.account = AccountConfig(name="acme", api_url="http://api.test/v2",
                                     api_key=Secret(key))
        self.invalid: Counter[str] = Counter()

    def count_invalid(self, kind: str) -> None:
        """Count one invalid record."""
        self.invalid[kind] += 1


def item(ident: str, name: str, cpu: int) -> dict[str, Any]:
    """An instance item (``cpu`` -1 makes it invalid)."""
    return {"id": ident, "name": name, "status": "running", "region": "eu-1", "cpu": cpu,
            "memory_gb": 2}


ITEMS = st.builds(item, st.sampled_from(["i-1", "i-2", "i-3", "i-4", "i-5", "i-6"]),
                  st.sampled_from(["web", "db", f"leak-{KEY}"]),
                  st.sampled_from([1, 1, 1, 1, 2, -1]))
PAGES = st.lists(st.tuples(st.lists(ITEMS, max_size=7), st.sampled_from(["req_a", "req_b"])),
                 max_size=8)


def run(pages: Sequence[tuple[list[dict[str, Any]], str]], *, whole: bool, switch: int,
        batch_size: int) -> dict[str, Any]:
    """Feed ``pages`` to a collector (each page at once, or item by item as answers of
    their own with the page's request id); everything it did, and what it raised."""
    batches: list[list[Instance]] = []
    client = FakeClient(KEY)
    collector = Collector("instances", instance_from_api, lambda b: batches.append(list(b)),
                          client, None, batch_size)
    raised: tuple[type[Exception], str, str | None] | None = None
    try:
        for n, (items, request_id) in enumerate(pages):
            collector.phase = int(n >= switch)
            for chunk in ([items] if whole else [[i] for i in items]):
                collector.add(chunk, request_id)
    except Exception as exc:  # compared, whatever it is
        raised = (type(exc), str(exc), getattr(exc, "request_id", None))
    else:
        collector.flush()
    return {"batches": batches, "raised": raised, "count": collector.count,
            "duplicates": (collector.duplicates, collector.duplicate_sample),
            "superseded": (collector.superseded, collector.superseded_sample),
            "invalid": client.invalid}


@settings(max_examples=300, deadline=None)
@given(pages=PAGES, switch=st.integers(0, 8), batch_size=st.integers(1, 6))
def test_an_answer_at_once_is_its_items_one_by_one(
        pages: list[tuple[list[dict[str, Any]], str]], switch: int, batch_size: int) -> None:
    """Pages with repeats (identical or changed, within a page or across, before or after
    the fan-out's fallback phase), invalid items and the key in a field: taken whole, a
    collector hands over the same batches, counts and samples the same repeats, and
    raises the same error (type, text and request id) as taking each item alone."""
    whole = run(pages, whole=True, switch=switch, batch_size=batch_size)
    assert whole == run(pages, whole=False, switch=switch, batch_size=batch_size)
    for batch in whole["batches"]:
        assert all(KEY not in value for record in batch for value in record
                   if isinstance(value, str))


def test_a_page_of_new_ids_fills_batches_as_items_would() -> None:
    """A page of new ids larger than the batch size goes out in full batches, the rest
    kept for the next page."""
    pages = [([item(f"i-{n}", "web", 1) for n in range(7)], "req_a")]
    result = run(pages, whole=True, switch=1, batch_size=3)
    assert [len(b) for b in result["batches"]] == [3, 3, 1]


TEXT = st.text(alphabet="ab\x00k", max_size=6)


@settings(max_examples=300, deadline=None)
@given(names=st.lists(st.tuples(TEXT, st.none() | TEXT), max_size=5),
       secret=st.sampled_from(["", "k", "ab", "a\x00b", "\x00", "kk"]))
def test_a_page_is_redacted_as_its_records_are(names: list[tuple[str, str | None]],
                                               secret: str) -> None:
    """Whatever the fields hold (the key, parts of it across two fields, NULs), the page
    test redacts exactly what :func:`redact_fields` does record by record."""
    records = [Instance(f"i-{n}", name, "running", "eu-1", 1, 2.0, plan, "{}", None, "{}")
               for n, (name, plan) in enumerate(names)]
    assert redact_page(records, secret) == [redact_fields(r, secret) for r in records]
