"""Finding the ids a crawl no longer saw (:mod:`nexus_audit.history.removals`): whatever the
two crawls' orders, the answer is the plain walk's, ids and order."""

from __future__ import annotations

from itertools import filterfalse

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_audit.history.removals import missing_ids


def walk(snapshot: dict[str, object], seen: dict[str, object]) -> list[str]:
    """The answer by definition: the snapshot's ids not seen, in the snapshot's order."""
    return list(filterfalse(seen.__contains__, snapshot))


@st.composite
def two_crawls(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A crawl's ids and the next crawl's: some removed, some added anywhere, the rest in
    the same order (an API paging in a stable order) or, sometimes, shuffled; ids as
    equal strings that are new objects (parsed afresh) or the same ones."""
    size = draw(st.integers(0, 1200))
    old = [f"i-{n:05d}" for n in range(size)]
    removed = draw(st.sets(st.integers(0, max(size - 1, 0)), max_size=6)) if size else set()
    kept = [ident for n, ident in enumerate(old) if n not in removed]
    new = list(kept)
    for n in range(draw(st.integers(0, 6))):
        new.insert(draw(st.integers(0, len(new))), f"new-{n}")
    if draw(st.booleans()):
        new = [(ident + ".")[:-1] for ident in new]  # equal text, other objects
    if draw(st.integers(0, 9)) == 0:
        new = draw(st.permutations(new))
    return old, list(new)


@settings(max_examples=300, deadline=None)
@given(two_crawls())
def test_missing_ids_are_the_plain_walks(crawls: tuple[list[str], list[str]]) -> None:
    """With both orders known, the walk in step finds the same ids in the same order as
    the plain walk, stretches of any length apart and shuffled crawls included."""
    old, new = crawls
    snapshot = dict.fromkeys(old, 0)
    seen = dict.fromkeys(new, 0)
    expected = walk(snapshot, seen)
    missing = len(expected)
    assert missing_ids(snapshot, old, seen, new, missing) == expected
    assert missing_ids(snapshot, None, seen, new, missing) == expected
    assert missing_ids(snapshot, old, seen, None, missing) == expected


def test_a_miscounted_removal_falls_back_to_the_plain_walk() -> None:
    """Asked for more ids than are missing, the walk in step gives up rather than guess:
    the answer is the plain walk's (all there are), never an id that was seen."""
    old = [f"i-{n}" for n in range(600)]
    new = old[:100] + old[101:]
    snapshot, seen = dict.fromkeys(old, 0), dict.fromkeys(new, 0)
    assert missing_ids(snapshot, old, seen, new, 3) == ["i-100"]


def test_orders_that_do_not_match_their_dicts_are_not_used() -> None:
    """An order that is not its dict's (an id repeated: another length) is ignored, so a
    repeated id is never named twice: the answer comes from the dicts alone."""
    snapshot = dict.fromkeys(["a", "b", "c"], 0)
    seen = dict.fromkeys(["c"], 0)
    assert missing_ids(snapshot, ["a", "a", "b", "c"], seen, ["c"], 2) == ["a", "b"]
    assert missing_ids(snapshot, ["a", "b", "c"], seen, ["c", "c"], 2) == ["a", "b"]
