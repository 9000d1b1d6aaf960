"""API keys: several valid keys, each known by a non-secret id, revocable at runtime.

Each key belongs to one account (the reference: a key lists "all compute instances in your
account"); an account may have several keys.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable


def key_id(key: str) -> str:
    """The non-secret id of a key (``key_`` + 8 hex of its SHA-256), safe to log."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:8]


class KeyRing:
    """The set of keys the simulator accepts, and the account of each."""

    def __init__(self, keys: Iterable[str], *, accounts: int = 1) -> None:
        self._ids = {k: key_id(k) for k in keys}
        #: Key id → index of its account: key ``i`` belongs to account ``i % accounts``.
        self._accounts = {kid: i % accounts for i, kid in enumerate(self._ids.values())}
        self._revoked: set[str] = set()
        self._lock = threading.Lock()

    def add(self, key: str, *, account: int = 0) -> str:
        """Accept another key of ``account`` (or un-revoke it); return its id."""
        with self._lock:
            self._ids[key] = key_id(key)
            self._accounts.setdefault(self._ids[key], account)
            self._revoked.discard(key)
            return self._ids[key]

    def account_of(self, kid: str) -> int:
        """The index of the account the key with id ``kid`` belongs to (``KeyError`` for
        a key this ring never held)."""
        return self._accounts[kid]

    def revoke(self, key: str) -> None:
        """Reject ``key`` from now on (401). Unknown keys are ignored."""
        with self._lock:
            self._revoked.add(key)

    def revoke_id(self, kid: str) -> None:
        """Revoke the key whose id is ``kid``."""
        with self._lock:
            self._revoked.update(k for k, i in self._ids.items() if i == kid)

    def authenticate(self, header: str | None, *, allow_revoked: bool = False) -> str | None:
        """The key id for an ``Authorization`` header value, or None if not accepted."""
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        with self._lock:
            kid = self._ids.get(token)
            if kid is None or (token in self._revoked and not allow_revoked):
                return None
            return kid
