"""Sorted id indexes of a fleet: by region, by status, by both; keyset pages over them."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Mapping
from itertools import chain
from typing import Final

from .synthetic import Instance

ALL: Final[tuple[None, None]] = (None, None)

#: A filter set: region, status, and tag pairs sorted by key.
FilterKey = tuple[str | None, str | None, tuple[tuple[str, str], ...]]


def filter_key(
    region: str | None, status: str | None, tags: Mapping[str, str] | None
) -> FilterKey:
    """The canonical, hashable form of a filter set (tags sorted by key)."""
    return (region, status, tuple(sorted(tags.items())) if tags else ())


def matches(inst: Instance, key: FilterKey) -> bool:
    """True when ``inst`` passes every filter of ``key``."""
    region, status, tags = key
    return (
        (region is None or inst.region == region)
        and (status is None or inst.status == status)
        and all(inst.tags.get(k) == v for k, v in tags)
    )


def rs_keys(region: str, status: str) -> tuple[tuple[str | None, str | None], ...]:
    """The region/status indexes an instance of ``region`` and ``status`` belongs in."""
    return (ALL, (region, None), (None, status), (region, status))


def discard(ids: list[str], iid: str) -> None:
    """Remove ``iid`` from the sorted ``ids`` if it is there."""
    at = bisect_left(ids, iid)
    if at < len(ids) and ids[at] == iid:
        del ids[at]


def build_indexes(
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
    by_rs[ALL] = sorted(chain.from_iterable(by_combo.values()))
    return by_rs
