"""The ids a crawl no longer saw: those of the snapshot it was compared with that it did
not stage (see :class:`~nexus_audit.history.staging.StagedCrawl`), found for each commit.

How many are missing is known by counting; which ones takes a walk over the snapshot. A
plain walk looks each id up in the crawl's ids, about 25 ns an id: a fleet of 10,000
with one instance replaced spent 0.2 ms of each commit finding it. Listed in order (the
dicts' order: as each crawl handed its ids), the two crawls' ids are walked in step
instead where they agree (an API that pages in a stable order): the stretches they share
are compared as list slices in C, a few ns an id, and only where they part is an id
looked up. Whatever it finds is checked to be exactly the missing ids (each one of the
snapshot's ids, not seen, as many as are missing); otherwise (the orders differ) the
plain walk answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import compress, count, filterfalse, islice
from operator import ne
from typing import Final

#: Ids compared at once: long enough that slicing and comparing in C dominate, short
#: enough that finding where a stretch parts stays cheap.
_STRETCH: Final = 256


def missing_ids(snapshot: Mapping[str, object], snapshot_order: Sequence[str] | None,
                seen: Mapping[str, object], order: Sequence[str] | None,
                missing: int) -> list[str]:
    """The ``missing`` ids of ``snapshot`` that are not in ``seen``, in ``snapshot``'s order.

    ``snapshot_order`` and ``order``: the ids of ``snapshot`` and of ``seen`` in their
    (dicts') order, when known (None: not kept); ``missing``: how many ids of
    ``snapshot`` are not in ``seen`` (counted by the caller).
    """
    if missing <= 0:
        return []
    if (snapshot_order is not None and order is not None
            and len(snapshot_order) == len(snapshot) and len(order) == len(seen)):
        found = _in_step(snapshot_order, order, snapshot, seen, missing)
        if found is not None:
            return found
    return list(islice(filterfalse(seen.__contains__, snapshot), missing))


def _in_step(old: Sequence[str], new: Sequence[str], snapshot: Mapping[str, object],
             seen: Mapping[str, object], missing: int) -> list[str] | None:
    """The walk in step over both orders (see the module docstring); None when the ids
    both orders hold come in another order in each, or it ran out before finding them all.
    """
    found: list[str] = []
    i = j = 0
    while len(found) < missing:
        if i >= len(old):
            return None
        ours = old[i:i + _STRETCH]
        theirs = new[j:j + len(ours)]
        if ours == theirs:
            i += len(ours)
            j += len(ours)
            continue
        # Where the stretches part (C-level): there, an id the crawl no longer saw, a new
        # id, or (neither) the same ids in another order, which this walk cannot follow.
        k = next(compress(count(), map(ne, ours, theirs)), len(theirs))
        i += k
        j += k
        x = old[i]
        y = new[j] if j < len(new) else None  # None: the crawl's ids ran out here
        if x not in seen:
            found.append(x)
            i += 1
        elif y is not None and y not in snapshot:
            j += 1
        else:
            return None
    return found
