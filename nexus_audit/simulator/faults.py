"""Fault injection: random faults by probability and one-shot scripted faults."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class FaultKind(StrEnum):
    """What a fault does to the request it hits."""

    HTTP_500 = "500"  # 500 INTERNAL_ERROR in the error format
    HTTP_502 = "502"  # 502 BAD_GATEWAY
    HTTP_503 = "503"  # 503 SERVICE_UNAVAILABLE
    HTTP_429 = "429"  # spurious 429 RATE_LIMITED with Retry-After; quota not consumed
    HTTP_403 = "403"  # 403 FORBIDDEN
    RESET = "reset"  # the connection is aborted without a response
    SLOW = "slow"  # sleep ``seconds`` first, then answer normally
    TRUNCATED_JSON = "truncated_json"  # the JSON body is cut in half
    INVALID_JSON = "invalid_json"  # the JSON body loses its quotes (like the reference)
    NO_PAGINATION = "no_pagination"  # a list page without its ``pagination`` key
    MISSING_ID = "missing_id"  # the first item of a list lacks ``id``
    WRONG_TYPES = "wrong_types"  # the first item has a number as a string (cpu/size_bytes)
    INVALID_CURSOR = "invalid_cursor"  # 400 INVALID_CURSOR
    REVOKE_KEY = "revoke_key"  # the request's key is revoked: 401 now and from then on


# Faults that change a successful body; the handler applies them.
BODY_FAULTS = frozenset(
    {
        FaultKind.TRUNCATED_JSON,
        FaultKind.INVALID_JSON,
        FaultKind.NO_PAGINATION,
        FaultKind.MISSING_ID,
        FaultKind.WRONG_TYPES,
    }
)


class Release:
    """A switch thrown once from any thread, which coroutines on any loop can wait for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def set(self) -> None:
        """Throw the switch: every waiter wakes up now, later ones do not wait."""
        with self._lock:
            self._set = True
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(event.set)

    def is_set(self) -> bool:
        """True once :meth:`set` was called."""
        with self._lock:
            return self._set

    async def wait(self, seconds: float) -> None:
        """Return once the switch is thrown, or after ``seconds``."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self._set:
                return
            self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter[1].wait(), seconds)
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault chosen for one request."""

    kind: FaultKind
    seconds: float = 0.0  # for SLOW
    retry_after: int = 1  # for HTTP_429
    #: For a scripted SLOW: set to end the wait before ``seconds`` are up.
    released: Release | None = field(default=None, compare=False)

    async def hold(self) -> None:
        """A SLOW fault's wait: ``seconds``, or less once its script is released."""
        if self.released is None:
            await asyncio.sleep(self.seconds)
        else:
            await self.released.wait(self.seconds)


@dataclass(slots=True)
class ScriptedFault:
    """A fault that hits ``times`` matching requests after letting ``after`` pass.

    ``path`` None matches every API path; a path ending in ``*`` is a prefix.
    ``method`` None matches every method. A SLOW one holds its answers for ``seconds``
    or until :meth:`release` (from any thread), whichever comes first: a test holds a
    request for as long as it needs with a generous ``seconds`` as the backstop, instead
    of racing a fixed window.
    """

    kind: FaultKind
    path: str | None = None
    method: str | None = None
    times: int = 1
    after: int = 0
    seconds: float = 0.0
    retry_after: int = 1
    seen: int = 0
    fired: int = 0
    released: Release = field(default_factory=Release, compare=False)

    def release(self) -> None:
        """End the wait of the SLOW answers held now, and let later ones go at once."""
        self.released.set()

    def matches(self, method: str, path: str) -> bool:
        """True when this script applies to ``method path``."""
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.path is None:
            return True
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path

    @property
    def exhausted(self) -> bool:
        """True once the fault has fired ``times`` times."""
        return self.fired >= self.times


class FaultInjector:
    """Chooses the fault (if any) for each API request; scripted faults come first."""

    def __init__(
        self,
        *,
        seed: int = 0,
        p500: float = 0.0,
        p429: float = 0.0,
        preset: float = 0.0,
        pslow: float = 0.0,
        pmalformed: float = 0.0,
        slow_seconds: float = 5.0,
    ) -> None:
        self.p500, self.p429, self.preset = p500, p429, preset
        self.pslow, self.pmalformed = pslow, pmalformed
        self.slow_seconds = slow_seconds
        self._rng = random.Random(f"{seed}:faults")
        self._scripts: list[ScriptedFault] = []
        self._lock = threading.Lock()

    def script(
        self,
        kind: FaultKind | str,
        *,
        path: str | None = None,
        method: str | None = None,
        times: int = 1,
        after: int = 0,
        seconds: float | None = None,
        retry_after: int = 1,
    ) -> ScriptedFault:
        """Queue a one-shot fault, e.g. ``script("reset", path="/v2/instances", times=2)``.

        ``kind`` is a FaultKind or its value; ``seconds`` (SLOW) defaults to the
        configured slow duration. Raises ValueError for bad arguments.
        """
        fk = FaultKind(kind)
        if times < 1 or after < 0 or retry_after < 1:
            raise ValueError("times >= 1, after >= 0 and retry_after >= 1 are required")
        if seconds is not None and seconds < 0:
            raise ValueError("seconds must be >= 0")
        scripted = ScriptedFault(
            kind=fk,
            path=path,
            method=method,
            times=times,
            after=after,
            seconds=self.slow_seconds if seconds is None else seconds,
            retry_after=retry_after,
        )
        with self._lock:
            self._scripts.append(scripted)
        return scripted

    def script_from_json(self, body: Mapping[str, object]) -> ScriptedFault:
        """Queue a fault described by a JSON object (the ``POST /_sim/faults`` body)."""
        allowed = {"kind", "path", "method", "times", "after", "seconds", "retry_after"}
        unknown = set(body) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        kind, path, method = body.get("kind"), body.get("path"), body.get("method")
        seconds = body.get("seconds")
        if not isinstance(kind, str):
            raise ValueError("'kind' must be a string")
        if path is not None and not isinstance(path, str):
            raise ValueError("'path' must be a string")
        if method is not None and not isinstance(method, str):
            raise ValueError("'method' must be a string")
        if seconds is not None and (
            not isinstance(seconds, int | float) or isinstance(seconds, bool)
        ):
            raise ValueError("'seconds' must be a number")
        return self.script(
            kind,
            path=path,
            method=method,
            times=_int_field(body, "times", 1),
            after=_int_field(body, "after", 0),
            seconds=None if seconds is None else float(seconds),
            retry_after=_int_field(body, "retry_after", 1),
        )

    def pending(self) -> list[ScriptedFault]:
        """Scripted faults that have not fired all their times yet."""
        with self._lock:
            return [s for s in self._scripts if not s.exhausted]

    def clear(self) -> None:
        """Drop all scripted faults."""
        with self._lock:
            self._scripts.clear()

    def pick(self, method: str, path: str) -> Fault | None:
        """The fault for this request: a due scripted one, else a random one, else None."""
        with self._lock:
            # Every matching script counts the request; the earliest due one fires.
            due: ScriptedFault | None = None
            for script in self._scripts:
                if script.exhausted or not script.matches(method, path):
                    continue
                script.seen += 1
                if due is None and script.seen > script.after:
                    due = script
            if due is not None:
                due.fired += 1
                self._scripts = [x for x in self._scripts if not x.exhausted]
                return Fault(due.kind, seconds=due.seconds, retry_after=due.retry_after,
                             released=due.released)
            return self._random_fault()

    def _random_fault(self) -> Fault | None:
        # One draw per configured kind, in a fixed order, keeps runs reproducible.
        rng = self._rng
        if self.preset and rng.random() < self.preset:
            return Fault(FaultKind.RESET)
        if self.p500 and rng.random() < self.p500:
            return Fault(FaultKind.HTTP_500)
        if self.p429 and rng.random() < self.p429:
            return Fault(FaultKind.HTTP_429)
        if self.pslow and rng.random() < self.pslow:
            return Fault(FaultKind.SLOW, seconds=self.slow_seconds)
        if self.pmalformed and rng.random() < self.pmalformed:
            kind = rng.choice((FaultKind.TRUNCATED_JSON, FaultKind.INVALID_JSON))
            return Fault(kind)
        return None


def _int_field(body: Mapping[str, object], name: str, default: int) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"'{name}' must be an integer")
    return value


_LIST_KEYS = ("instances", "buckets")
# Numbers that the WRONG_TYPES fault turns into strings, first match wins.
_NUMERIC_FIELDS = ("cpu", "size_bytes", "memory_gb")


def mangle_payload(kind: FaultKind, payload: dict[str, object]) -> dict[str, object]:
    """Apply a structural body fault to a response payload (returns a new dict)."""
    out = dict(payload)
    if kind is FaultKind.NO_PAGINATION:
        out.pop("pagination", None)
        return out
    if kind not in (FaultKind.MISSING_ID, FaultKind.WRONG_TYPES):
        return out
    for list_key in _LIST_KEYS:
        items = out.get(list_key)
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            continue
        first = dict(items[0])
        if kind is FaultKind.MISSING_ID:
            first.pop("id", None)
        else:
            for name in _NUMERIC_FIELDS:
                if name in first:
                    first[name] = str(first[name])
                    break
        out[list_key] = [first, *items[1:]]
    return out


def mangle_body(kind: FaultKind, body: bytes) -> bytes:
    """Apply a byte-level body fault: cut the JSON short or make it invalid."""
    if kind is FaultKind.TRUNCATED_JSON:
        return body[: max(1, len(body) // 2)]
    if kind is FaultKind.INVALID_JSON:
        # Dropping the quotes is how the provider's reference samples look.
        broken = body.replace(b'"', b"")
        return broken if broken != body else body + b"}"
    return body
