"""The snapshot's exposition, rendered per account and merged (the expensive part of an
install, done again only for the accounts whose part changed).

A snapshot is cut into one slice per account (every series labelled with that account)
and a remainder that belongs to no account (``nexus_pricing_info``). Each slice renders
through the same collectors into families; the body of the whole is, family by family in
the collectors' order, the remainder's samples and then each account's in account order,
which is exactly what one render of the whole snapshot gives: every collector orders its
series by account first (sorted keys, per-resource series in account then id order, and
the snapshot's ``accounts`` in sorted order). tests/test_exposition_slices.py holds the
merged bytes to a full render over random snapshots, in every format.

With a hundred accounts a full render is ~27,000 samples (~175 ms of CPU) after every
commit; with the slices of unchanged accounts reused, an install renders the accounts
that committed (a few ms each) and joins bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, Final

from nexus_audit.metrics.snapshot import PricingLabel, Snapshot

#: A family as rendered: (name, its ``# HELP``/``# TYPE``/``# UNIT`` lines, its samples).
Block = tuple[bytes, bytes, bytes]
_HELP: Final = b"# HELP "
#: Fields cut per account; the others (generation, accounts, pricing) are set apart.
_KEYED: Final = tuple(f.name for f in fields(Snapshot)
                      if f.name not in {"generation", "accounts", "pricing"})


def _owner(key: object) -> str:
    """The account a mapping key or a series row belongs to (its first element)."""
    return key if isinstance(key, str) else key[0]  # type: ignore[index]


def cut(snapshot: Snapshot) -> tuple[Snapshot, dict[str, Snapshot]]:
    """The snapshot as its remainder (no account's series, generation 0) and a slice per
    account named anywhere in it (generation 0), which compare equal while unchanged."""
    empty: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {}
    for name in _KEYED:
        value = getattr(snapshot, name)
        if value is None:  # findings without a policy
            empty[name] = None
            continue
        tuple_rows = isinstance(value, tuple)
        empty[name] = () if tuple_rows else {}
        items = value if tuple_rows else value.items()
        for item in items:
            owner = _owner(item if tuple_rows else item[0])
            slot = parts.setdefault(owner, {}).setdefault(name, [] if tuple_rows else {})
            if tuple_rows:
                slot.append(item)
            else:
                slot[item[0]] = item[1]
    shown = set(snapshot.accounts)
    base = replace(snapshot, generation=0, accounts=(), **empty)
    slices = {}
    for account, values in parts.items():
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        slices[account] = replace(base, accounts=(account,) if account in shown else (),
                                  pricing=None, **values)
    return base, slices


def blocks(body: bytes) -> list[Block]:
    """The families of a rendered body, each as (name, header lines, sample lines)."""
    out = []
    for chunk in (b"\n" + body).split(b"\n" + _HELP)[1:]:
        lines = chunk.rstrip(b"\n").split(b"\n")
        head = 1
        while head < len(lines) and lines[head].startswith(b"# "):
            head += 1
        name = lines[0].split(b" ", 1)[0]
        header = b"\n".join([_HELP + lines[0], *lines[1:head]]) + b"\n"
        samples = b"\n".join(lines[head:])
        out.append((name, header, samples + b"\n" if samples else b""))
    return out


#: A slice with every family a collector emits only sometimes (per-resource series, the
#: findings): rendered once per format, it gives the order of all the families.
PROBE: Final = Snapshot(
    accounts=("probe",), bucket_series=(("probe", "b", "r", "private", 0),),
    instance_series=(("probe", "i", "n", "r", "running", ""),), findings={},
    pricing=PricingLabel(name="probe", as_of="", currency="", digest=""))


def merge(renders: Sequence[Sequence[Block]], order: Sequence[bytes] = ()) -> bytes:
    """The body of the whole from the renders of its slices, in the order given: each
    family once, with the samples of every render in turn, families in ``order`` (the
    families of :data:`PROBE`'s render); one not in it after the family it follows."""
    order = list(order)
    headers: dict[bytes, bytes] = {}
    samples: dict[bytes, list[bytes]] = {}
    for render in renders:
        at = -1
        for name, header, body in render:
            if name not in headers:
                headers[name] = header
                samples[name] = []
                if name not in order:
                    order.insert(at + 1, name)
            at = order.index(name)
            samples[name].append(body)
    return b"".join(headers[n] + b"".join(samples[n]) for n in order if n in headers)


class SliceCache:
    """Rendered slices of the last snapshot, per format: an account whose slice is
    unchanged is not rendered again."""

    def __init__(self, render: Callable[[Snapshot, str], bytes]) -> None:
        #: Renders one slice in one format (``accept``): the collectors over that slice.
        self._render = render
        self._slices: dict[str, Mapping[str, tuple[Snapshot, list[Block]]]] = {}
        #: Per format, the order of every family (:data:`PROBE`'s).
        self._orders: dict[str, list[bytes]] = {}
        #: Slices rendered by the last :meth:`body` (for tests and the log).
        self.rendered = 0

    def body(self, snapshot: Snapshot, accept: str, content_type: str) -> bytes:
        """The whole snapshot's families in the format ``accept`` asks for."""
        base, slices = cut(snapshot)
        previous = self._slices.get(content_type, {})
        kept: dict[str, tuple[Snapshot, list[Block]]] = {}
        renders = [blocks(self._render(base, accept))]
        self.rendered = 1
        for account in sorted(slices):
            piece = slices[account]
            hit = previous.get(account)
            if hit is None or hit[0] != piece:
                hit = (piece, blocks(self._render(piece, accept)))
                self.rendered += 1
            kept[account] = hit
            renders.append(hit[1])
        self._slices[content_type] = kept
        order = self._orders.get(content_type)
        if order is None:
            order = self._orders[content_type] = [
                name for name, _, _ in blocks(self._render(PROBE, accept))]
        return merge(renders, order)
