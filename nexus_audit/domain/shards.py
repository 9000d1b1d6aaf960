"""Sharding accounts across ``serve`` replicas: which replica crawls which account.

``--shard i/n`` (or ``NEXUS_AUDIT_SHARD``) makes a replica the i-th of n: it crawls the
configured accounts whose name hashes to it, and no other. The hash is SHA-256 of the
account name (not Python's ``hash``, which changes per process), so the assignment is
stable across restarts, machines and versions, and n replicas with the same configuration
cover every account exactly once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from nexus_audit.errors import UsageError

_SPEC: Final = re.compile(r"([0-9]+)/([0-9]+)")
#: More replicas than this is a typo, not a deployment.
MAX_SHARDS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Shard:
    """Replica ``index`` (1-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, parameter: str = "--shard") -> Shard:
        """``i/n`` with 1 <= i <= n; :class:`UsageError` naming ``parameter`` otherwise."""
        match = _SPEC.fullmatch(text.strip())
        if match is None:
            raise UsageError(f"{parameter}: {text!r} is not i/n (e.g. 1/3: the first of "
                             "three replicas)", parameter=parameter)
        index, count = int(match.group(1)), int(match.group(2))
        if not 1 <= count <= MAX_SHARDS:
            raise UsageError(f"{parameter}: {text!r}: n must be between 1 and {MAX_SHARDS}",
                             parameter=parameter)
        if not 1 <= index <= count:
            raise UsageError(f"{parameter}: {text!r}: i must be between 1 and n ({count})",
                             parameter=parameter)
        return cls(index, count)

    def holds(self, account: str) -> bool:
        """Whether this replica crawls ``account``."""
        return shard_of(account, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(account: str, count: int) -> int:
    """The replica (1-based) of ``count`` that crawls ``account``."""
    digest = hashlib.sha256(account.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1
