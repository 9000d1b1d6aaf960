"""The CloudNexus v2 HTTP client: one request, within budget, retried as the policy says.

Every request takes a slot from the key's :class:`RateBudget` first (a retry takes a new
one), reports the server's ``X-RateLimit-*`` headers back to it, and ends in a dict or in
one of our :class:`~nexus_audit.errors.ApiError` children carrying status, code, message,
request id and endpoint. The key goes only into the ``Authorization`` header: endpoints in
stats, logs and errors are ``GET /instances``, never URLs with query strings.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDictProxy

from nexus_audit.api import untrusted
from nexus_audit.api.budget import RateBudget
from nexus_audit.api.retry import (
    DEFAULT_RETRY_POLICY,
    RetryPolicy,
    classify,
    parse_int_header,
    parse_retry_after,
)
from nexus_audit.config import DEFAULT_MAX_RESPONSE_BYTES, AccountConfig
from nexus_audit.domain import escape
from nexus_audit.domain.timeutil import Clock
from nexus_audit.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    ResponseTooLargeError,
    ServerError,
    TransportError,
)
from nexus_audit.logs import get_logger

log = get_logger(__name__)

USER_AGENT: Final = "nexus-audit"
#: Connections per host: enough for every region chain of a few accounts at once.
CONNECTIONS_PER_HOST: Final = 32
_MESSAGE_LIMIT: Final = 300
#: The longest request id or API error code kept: real ones are short (``req_7f8a9b2c1d``).
REQUEST_ID_LIMIT: Final = 128
_CHUNK: Final = 64 * 1024
#: A wait asked by the server at least this long is logged as a warning.
LONG_WAIT: Final = 5.0
#: The slowest upload link we wait for (1 Mbit/s): a request with a body gets its transfer
#: at this rate on top of the request timeout, so a 16 MiB part may take about 2 minutes
#: more and a 100 MiB single PUT about 14 (aiohttp has no timeout on write progress, so a
#: total bound stays, only scaled).
UPLOAD_FLOOR_BYTES_PER_SECOND: Final = 125_000


def request_seconds(timeout: float, body_size: int) -> float:
    """The total time allowed for a request whose body is ``body_size`` bytes: ``timeout``
    for the answer plus the body's transfer at :data:`UPLOAD_FLOOR_BYTES_PER_SECOND`.

    One bound for every request would fail every large upload on a link slower than
    ``body_size / timeout`` (16 MiB in 30 s needs 4.5 Mbit/s), at every retry.
    """
    return timeout + body_size / UPLOAD_FLOOR_BYTES_PER_SECOND


def clean_text(value: str, limit: int, secrets: tuple[str, ...] = ()) -> str:
    """``value`` fit to store and print: each secret replaced by ``[REDACTED]``, white space
    (CR, LF, tabs included) collapsed to single spaces, every other control or format
    character (ESC, NUL, C1, bidi overrides...) shown as an inert escape (``\\x1b``, the
    terminal rule of :mod:`nexus_audit.domain.escape`), cut to ``limit`` characters
    (``…`` marks a cut).

    A key split by control characters is a key all the same: when the text without them
    holds a secret, that text is kept (scrubbed) instead of the escaped one.
    """
    def scrub(text: str) -> str:
        for secret in secrets:
            if secret:
                text = text.replace(secret, "[REDACTED]")
        return text

    value = scrub(value)
    bare = "".join(ch for ch in value if ch.isprintable() or ch.isspace())
    if bare != value and any(secret and secret in bare for secret in secrets):
        value = scrub(bare)
    value = scrub(escape.terminal(" ".join(value.split())))
    return value if len(value) <= limit else value[:limit - 1] + "…"


@dataclass(slots=True)
class ApiStats:
    """Plain counters of API traffic, read by the metrics collector and crawl summaries."""

    #: Requests by (endpoint, HTTP status as text or ``error`` for transport failures).
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Retries by (endpoint, reason): ``429``, ``500``..., ``timeout``, ``connection``,
    #: ``invalid_json``, ``protocol``.
    retries: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Records that failed validation, by kind (``instances``, ``buckets``).
    invalid_records: Counter[str] = field(default_factory=Counter)
    rate_limit_remaining: int | None = None
    rate_limit_limit: int | None = None

    @property
    def total_requests(self) -> int:
        """Requests sent, whatever their outcome."""
        return sum(self.requests.values())

    @property
    def total_retries(self) -> int:
        """Retries of any reason."""
        return sum(self.retries.values())

    def by_endpoint(self) -> dict[str, dict[str, int]]:
        """Requests as ``{"GET /instances": {"200": 12}}`` (the crawl summary's form)."""
        out: dict[str, dict[str, int]] = {}
        for (endpoint, code), count in sorted(self.requests.items()):
            out.setdefault(endpoint, {})[code] = count
        return out


class Reply(NamedTuple):
    """A JSON object answer with its response headers (uploads verify the ``ETag``) and its
    request id (``X-Request-Id``, cleaned by :func:`clean_text`: never the raw header)."""

    payload: dict[str, Any]
    headers: Mapping[str, str]
    request_id: str | None = None


def object_path(bucket: str, key: str) -> str:
    """``/objects/{bucket}/{key}`` with both parts escaped (a ``/`` in the key included)."""
    return f"/objects/{quote(bucket, safe='')}/{quote(key, safe='')}"


def _error_class(status: int) -> type[ApiError]:
    if status == 401:
        return AuthError
    if status == 403:
        return ForbiddenError
    if status == 404:
        return NotFoundError
    if status == 429:
        return RateLimitedError
    if status >= 500:
        return ServerError
    return BadRequestError


_LEADS: Final[Mapping[int, str]] = {
    400: "CloudNexus rejected the request",
    401: "CloudNexus rejected the API key: it is invalid or expired",
    403: "CloudNexus refused access: the key lacks a permission or this IP is not on the "
         "account's allow-list",
    404: "CloudNexus found no such resource or endpoint (check NEXUS_API_URL)",
    429: "CloudNexus kept answering 429 Too Many Requests past the retry allowance",
}


def client_session() -> aiohttp.ClientSession:
    """The HTTP session crawls and uploads share (one per process run)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit_per_host=CONNECTIONS_PER_HOST))


def disable_hidden_retries(session: aiohttp.ClientSession) -> None:
    """Stop aiohttp from silently re-sending a GET whose kept-alive connection dropped.

    aiohttp (3.10+) retries such a request once on its own; that send would bypass the
    rate budget and the request counters (the first attempt may well have reached the
    server). Our retry loop handles the disconnect instead. aiohttp offers no public
    switch; its own test client flips the same attribute.
    """
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False


class CloudNexusClient:
    """CloudNexus v2 over one aiohttp session, within one key's :class:`RateBudget`."""

    def __init__(
        self,
        account: AccountConfig,
        session: aiohttp.ClientSession,
        budget: RateBudget,
        *,
        stats: ApiStats,
        timeout: float = 30.0,
        clock: Clock,
        rng: random.Random | None = None,
        policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.account = account
        self.session = session
        self.budget = budget
        self.stats = stats
        self.timeout = timeout
        self.clock = clock
        self.policy = policy
        #: Bytes allowed in one answer; past it the request fails RESPONSE_TOO_LARGE.
        self.max_response_bytes = max_response_bytes
        self._rng = rng or random.Random()
        self._base = account.api_url.rstrip("/")
        self._secret = account.api_key.reveal()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._all_stats: tuple[ApiStats, ...] = (stats,)
        disable_hidden_retries(session)

    def __repr__(self) -> str:
        return f"CloudNexusClient(account={self.account.name!r}, url={self._base!r})"

    def with_stats(self, extra: ApiStats) -> CloudNexusClient:
        """The same client (session, budget, randomness) also counting into ``extra``.

        A crawl counts its own requests this way while the shared counters keep growing.
        """
        clone = CloudNexusClient(
            self.account, self.session, self.budget, stats=self.stats, timeout=self.timeout,
            clock=self.clock, rng=self._rng, policy=self.policy,
            max_response_bytes=self.max_response_bytes,
        )
        clone._all_stats = (*self._all_stats, extra)
        return clone

    def scrub(self, text: str, limit: int = _MESSAGE_LIMIT) -> str:
        """``text`` with this client's key redacted and control characters removed, cut
        to ``limit`` (:func:`clean_text`): for anything that came from the API."""
        return clean_text(text, limit, (self._secret,))

    def _request_id(self, headers: Mapping[str, str]) -> str | None:
        value = headers.get("X-Request-Id")
        return None if value is None else self.scrub(value, REQUEST_ID_LIMIT) or None

    async def _read(self, response: aiohttp.ClientResponse, endpoint: str) -> bytes:
        """The body, read in chunks: past :attr:`max_response_bytes` it is abandoned (the
        connection closed) and :class:`ResponseTooLargeError` raised, so an endless body
        costs at most the cap in memory."""
        cap = self.max_response_bytes

        def too_large(what: str) -> ResponseTooLargeError:
            return ResponseTooLargeError(
                f"CloudNexus sent an answer of {what}, past the {cap:,}-byte cap per answer "
                "(max_response_bytes)", status=response.status, code="RESPONSE_TOO_LARGE",
                endpoint=endpoint, request_id=self._request_id(response.headers))

        length = response.content_length
        if length is not None and length > cap:
            raise too_large(f"{length:,} bytes (Content-Length)")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > cap:
                raise too_large(f"more than {cap:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- public calls ------------------------------------------------------------------

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``GET`` ``path`` (like ``/instances``) and return the JSON object it answers."""
        return (await self.get(path, params)).payload

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Reply:
        """``GET`` ``path``: the JSON object it answers, with the response headers."""
        return await self.send("GET", path, f"GET {path}", params=params)

    async def put_object(
        self,
        bucket: str,
        key: str,
        body: bytes,
        metadata: Mapping[str, Any],
        content_type: str = "application/octet-stream",
    ) -> dict[str, Any]:
        """``PUT /objects/{bucket}/{key}``: upload ``body``; returns etag and content hash."""
        path = object_path(bucket, key)
        headers = {
            "Content-Type": content_type,
            "X-Object-Metadata": json.dumps(dict(metadata), separators=(",", ":")),
        }
        return (await self.send("PUT", path, "PUT /objects", data=body, headers=headers)).payload

    # -- the retry loop ------------------------------------------------------------------

    def _count(self, endpoint: str, code: str) -> None:
        for stats in self._all_stats:
            stats.requests[(endpoint, code)] += 1

    def _count_retry(self, endpoint: str, reason: str) -> None:
        for stats in self._all_stats:
            stats.retries[(endpoint, reason)] += 1

    def count_retry(self, endpoint: str, reason: str) -> None:
        """Count a retry decided above this layer (a page re-read after a bad shape)."""
        self._count_retry(endpoint, reason)

    def count_invalid(self, kind: str) -> None:
        """Count one record that failed validation."""
        for stats in self._all_stats:
            stats.invalid_records[kind] += 1

    def _observe(self, headers: CIMultiDictProxy[str]) -> tuple[int | None, float | None]:
        limit = parse_int_header(headers.get("X-RateLimit-Limit"))
        remaining = parse_int_header(headers.get("X-RateLimit-Remaining"))
        reset = parse_int_header(headers.get("X-RateLimit-Reset"))
        for stats in self._all_stats:
            if remaining is not None:
                stats.rate_limit_remaining = remaining
            if limit is not None:
                stats.rate_limit_limit = limit
        self.budget.observe_headers(limit, remaining, None if reset is None else float(reset))
        return remaining, None if reset is None else float(reset)

    async def send(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Any request (multipart uploads: ``POST``, ``PUT``, ``DELETE``) within the budget
        and the retry policy; the JSON object answered and the response headers.

        ``endpoint`` labels the request in stats, logs and errors (no query strings).
        """
        url = self._base + path
        send_headers = {
            "Authorization": f"Bearer {self._secret}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **(headers or {}),
        }
        seconds = request_seconds(self.timeout, len(data) if data else 0)
        timeout = self._timeout if not data else aiohttp.ClientTimeout(total=seconds)
        retries = 0
        limited = 0
        limited_wait = 0.0
        while True:
            await self.budget.acquire()
            failure: ApiError
            reason: str
            try:
                async with self.session.request(
                    method, url, params=params, data=data, headers=send_headers,
                    timeout=timeout, allow_redirects=False,
                ) as response:
                    status = response.status
                    reply_headers = response.headers
                    body = await self._read(response, endpoint)
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.budget.done()
                self._count(endpoint, "error")
                timed_out = isinstance(exc, TimeoutError)
                reason = "timeout" if timed_out else "connection"
                what = (f"no answer within {round(seconds, 1):g}s" if timed_out
                        else f"connection failed ({type(exc).__name__})")
                failure = TransportError(f"CloudNexus unreachable: {what}", endpoint=endpoint)
            except ResponseTooLargeError as exc:
                self.budget.done()
                self._count(endpoint, str(exc.status))
                self._log_error(exc)
                raise
            except BaseException:
                self.budget.done()
                raise
            else:
                self.budget.done()
                self._count(endpoint, str(status))
                _, reset = self._observe(reply_headers)
                verdict = classify(status)
                if verdict == "ok":
                    try:
                        payload = untrusted.loads(body)
                    except untrusted.RepeatedKeyError as exc:
                        failure = ProtocolError(
                            f"CloudNexus named {exc.key!r:.80} twice in one object, with "
                            "different values", status=status, endpoint=endpoint,
                            request_id=self._request_id(reply_headers))
                        self._log_error(failure)
                        raise failure from None
                    except (ValueError, RecursionError):  # nested past the parser's depth
                        reason = "invalid_json"
                        failure = TransportError(
                            f"CloudNexus sent an unreadable {status} body "
                            f"({len(body)} bytes, not JSON)", status=status, endpoint=endpoint,
                            request_id=self._request_id(reply_headers),
                        )
                    else:
                        if not isinstance(payload, dict):
                            raise ProtocolError(
                                f"CloudNexus sent a JSON {type(payload).__name__}, "
                                "expected an object", status=status, endpoint=endpoint,
                                request_id=self._request_id(reply_headers),
                            )
                        return Reply(payload, reply_headers, self._request_id(reply_headers))
                else:
                    failure = self._error(status, body, reply_headers, endpoint)
                    if verdict == "fatal":
                        self._log_error(failure)
                        raise failure
                    if verdict == "rate_limited":
                        now = self.clock.now()
                        retry_after = parse_retry_after(reply_headers.get("Retry-After"), now)
                        wait = self.policy.rate_limit_wait(
                            retry_after=retry_after,
                            reset_epoch=reset, now_epoch=now.timestamp(), rng=self._rng,
                        )
                        limited += 1
                        limited_wait += wait
                        cap = self.budget.max_wait
                        if wait > cap:
                            # An absurd wait (hours, or a Reset in milliseconds) fails now,
                            # saying why, instead of holding every request on the key.
                            header = ("Retry-After", reply_headers.get("Retry-After"))
                            if retry_after is None:
                                header = ("X-RateLimit-Reset",
                                          reply_headers.get("X-RateLimit-Reset"))
                            failure = RateLimitedError(
                                f"CloudNexus answered 429 asking to wait {wait:,.0f}s "
                                f"({header[0]}: {self.scrub(str(header[1]), 40)}), past the "
                                f"{cap:g}s cap on a wait the server asks (max_server_wait)",
                                status=status, code=failure.code,
                                request_id=failure.request_id, endpoint=endpoint)
                            self._log_error(failure)
                            raise failure
                        if (limited > self.policy.max_rate_limited
                                or limited_wait > self.policy.max_rate_limit_wait):
                            self._log_error(failure)
                            raise failure
                        self._count_retry(endpoint, "429")
                        (log.warning if wait >= LONG_WAIT else log.info)(
                            "api.rate_limited", endpoint=endpoint, wait=round(wait, 3),
                            request_id=failure.request_id)
                        # Every request on this key waits, not only this one.
                        self.budget.hold_for(wait)
                        continue
                    reason = str(status)
            retries += 1
            if retries > self.policy.max_retries:
                self._log_error(failure, retries=retries - 1)
                raise failure
            self._count_retry(endpoint, reason)
            delay = self.policy.backoff(retries, self._rng)
            log.info("api.retry", endpoint=endpoint, reason=reason, retry=retries,
                     delay=round(delay, 3), status=failure.status, request_id=failure.request_id)
            await self.clock.sleep(delay)

    def _error(
        self, status: int, body: bytes, headers: CIMultiDictProxy[str], endpoint: str
    ) -> ApiError:
        code: str | None = None
        message: str | None = None
        request_id = self._request_id(headers)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # nested past the parser's depth
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            code = error.get("code") if isinstance(error.get("code"), str) else None
            message = error.get("message") if isinstance(error.get("message"), str) else None
            if isinstance(error.get("request_id"), str):
                request_id = self.scrub(error["request_id"], REQUEST_ID_LIMIT) or None
        if code is not None:
            code = self.scrub(code, REQUEST_ID_LIMIT) or None
        if message is None:
            text = body[:4 * _MESSAGE_LIMIT].decode("utf-8", "replace").strip()
            message = text if text else None
        if message is not None:
            # Scrubbed whole before the cut: a key cut in half would survive the scrub.
            message = self.scrub(message, 4 * _MESSAGE_LIMIT)[:_MESSAGE_LIMIT] or None
        lead = _LEADS.get(status, f"CloudNexus answered HTTP {status}")
        text = f"{lead}: {message}" if message else lead
        return _error_class(status)(text, status=status, code=code, request_id=request_id,
                                    endpoint=endpoint)

    def _log_error(self, error: ApiError, *, retries: int = 0) -> None:
        log.warning("api.error", account=self.account.name, endpoint=error.endpoint,
                    status=error.status, code=error.code, request_id=error.request_id,
                    retries=retries, error=error.message)

