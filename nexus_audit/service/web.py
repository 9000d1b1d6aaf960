"""The HTTP side of ``serve``: /metrics, /report, /healthz, /readyz, guarded.

The app is built from injected parts so tests run it with fakes: something that renders
the exposition (:class:`Exposition`), something that builds reports
(:class:`ReportSource`), a readiness probe, an :class:`AuthPolicy` and a clock.

Guarding follows Prometheus' exporter web configuration: optional bearer token or basic
auth (compared in constant time), optional TLS (1.2 or later). ``/healthz`` stays open so
liveness probes need no credentials; it reveals nothing but "ok".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web
from multidict import MultiMapping

from nexus_audit.config import WebConfig
from nexus_audit.domain.timeutil import Clock, Window, parse_duration
from nexus_audit.errors import ConfigError, NoDataError, StoreError, UsageError
from nexus_audit.logs import get_logger

log = get_logger(__name__)

#: Paths served without credentials: liveness probes must not need the token.
OPEN_PATHS: Final = frozenset({"/healthz"})
REPORT_PARAMETERS: Final = ("since", "until", "account", "stale_after")
#: Seconds a connection may take to deliver a whole request head (from connecting, or from
#: the previous response on a kept-alive connection); then it is closed. Also how long an
#: idle kept-alive connection stays open.
HEADER_TIMEOUT: Final = 10.0
DEFAULT_SINCE: Final = "30d"
JSON_DUMPS: Final = json.dumps


class Exposition(Protocol):
    """Renders the metrics for one scrape."""

    def render(self, accept: str) -> tuple[bytes, str]:
        """The body and its content type for the scrape's ``Accept`` header."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportQuery:
    """A validated ``GET /report`` query."""

    window: Window
    account: str | None = None
    stale_after: timedelta | None = None


class ReportSource(Protocol):
    """Builds the report JSON; called in a worker thread."""

    @property
    def accounts(self) -> tuple[str, ...]:
        """The configured account names (an unknown ``account`` is a 400)."""

    def report(self, query: ReportQuery) -> Mapping[str, Any]:
        """The report JSON for ``query``; ``NoDataError`` when there is nothing to report."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether every account has crawled recently; ``accounts`` holds the reasons."""

    ready: bool
    accounts: Mapping[str, Any] = field(default_factory=dict)


class HttpError(Exception):
    """An error answered as ``{"error": {"code", "message"[, "parameter"]}}``."""

    def __init__(self, status: int, code: str, message: str, *,
                 parameter: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """The JSON response for this error."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.parameter is not None:
            body["parameter"] = self.parameter
        return web.json_response({"error": body}, status=self.status, headers=self.headers)


# -- authentication ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthPolicy:
    """Who may call the guarded endpoints: anyone, a bearer token, basic auth, or either."""

    bearer_token: str | None = None
    basic_user: str | None = None
    basic_password: str | None = None

    @classmethod
    def from_web(cls, web_config: WebConfig) -> AuthPolicy:
        """The policy configured in ``[serve]``."""
        return cls(
            bearer_token=web_config.bearer_token.reveal() if web_config.bearer_token else None,
            basic_user=web_config.basic_auth_user,
            basic_password=(web_config.basic_auth_password.reveal()
                            if web_config.basic_auth_password else None),
        )

    @property
    def enabled(self) -> bool:
        """Whether any credential is required."""
        return self.bearer_token is not None or self.basic_user is not None

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value naming the accepted schemes."""
        schemes = []
        if self.bearer_token is not None:
            schemes.append('Bearer realm="nexus-audit"')
        if self.basic_user is not None:
            schemes.append('Basic realm="nexus-audit", charset="UTF-8"')
        return ", ".join(schemes)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value grants access (constant-time compare).

        A value that is not UTF-8 (aiohttp hands its bytes over as surrogate escapes) or
        basic credentials that are not ASCII base64 grant nothing; they never raise.
        """
        if not self.enabled:
            return True
        if not authorization:
            return False
        try:
            authorization.encode("utf-8")
        except UnicodeEncodeError:
            return False  # not UTF-8 on the wire: no token or password of ours
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        scheme = scheme.lower()
        if scheme == "bearer" and self.bearer_token is not None:
            return hmac.compare_digest(credentials.encode(), self.bearer_token.encode())
        if scheme == "basic" and self.basic_user is not None and self.basic_password is not None:
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):  # ValueError: non-ASCII
                return False
            user, sep, password = decoded.partition(":")
            # Both comparisons always run, so timing does not tell which one failed.
            user_ok = hmac.compare_digest(user.encode(), self.basic_user.encode())
            password_ok = hmac.compare_digest(password.encode(), self.basic_password.encode())
            return bool(sep) and user_ok and password_ok
        return False


def make_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from PEM files; ``ConfigError`` if unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl's FileNotFoundError carries no file name (it said "None does not exist"): name
    # the missing file ourselves.
    for setting, path in (("tls_cert_file", cert_file), ("tls_key_file", key_file)):
        if not path.is_file():
            raise ConfigError(f"serve.{setting}: {path} does not exist (or is not a file)",
                              parameter=setting)
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except FileNotFoundError as exc:  # removed in between
        raise ConfigError(f"serve.tls_cert_file/tls_key_file: {cert_file} or {key_file} "
                          f"does not exist ({exc.strerror})") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"serve.tls_cert_file/tls_key_file: cannot load {cert_file} with {key_file}: "
            f"{getattr(exc, 'reason', None) or exc.strerror or exc}"
        ) from None
    return context


# -- query parsing (pure) ------------------------------------------------------------------


def parse_report_query(
    query: Mapping[str, str],
    *,
    accounts: tuple[str, ...],
    now: datetime,
) -> ReportQuery:
    """Validate ``/report``'s parameters; ``UsageError`` naming the parameter at fault.

    ``query`` is a multi-dict (aiohttp's ``request.query``) or a plain mapping. Empty
    values mean "the default" (``until=`` is now, ``account=`` is every account).
    """
    for key in query:
        if key not in REPORT_PARAMETERS:
            raise UsageError(f"{key}: unknown parameter (known: {', '.join(REPORT_PARAMETERS)})",
                             parameter=key)
        if isinstance(query, MultiMapping) and len(query.getall(key)) > 1:
            raise UsageError(f"{key}: given more than once", parameter=key)
    since = (query.get("since") or "").strip() or DEFAULT_SINCE
    until = (query.get("until") or "").strip() or None
    window = Window.parse(since, until, now)
    account = (query.get("account") or "").strip() or None
    if account is not None and account not in accounts:
        known = ", ".join(accounts) or "none"
        raise UsageError(f"account: unknown account {account!r} (configured: {known})",
                         parameter="account")
    stale_text = (query.get("stale_after") or "").strip()
    stale_after = parse_duration(stale_text, parameter="stale_after") if stale_text else None
    return ReportQuery(window=window, account=account, stale_after=stale_after)


# -- the application -----------------------------------------------------------------------

_EXPOSITION: Final = web.AppKey("exposition", Exposition)
_REPORTS: Final = web.AppKey("reports", ReportSource)
ReadinessProbe = Callable[[], Readiness]
_READINESS: Final[web.AppKey[ReadinessProbe]] = web.AppKey("readiness")
_CLOCK: Final = web.AppKey("clock", Clock)
_INFLIGHT: Final[web.AppKey[dict[tuple[str, ...], asyncio.Future[bytes]]]] = \
    web.AppKey("inflight")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_middleware() -> Any:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as exc:
            return exc.response()
        except web.HTTPNotFound:
            return HttpError(404, "NOT_FOUND", f"no such endpoint: {request.path}").response()
        except web.HTTPMethodNotAllowed as exc:
            return HttpError(405, "METHOD_NOT_ALLOWED",
                             f"{request.method} is not allowed on {request.path}",
                             headers={"Allow": ",".join(sorted(exc.allowed_methods))}
                             ).response()
        except web.HTTPException:
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("http.error", path=request.path, method=request.method)
            return HttpError(500, "INTERNAL", "internal error; see the service's log").response()

    return errors


def _auth_middleware(policy: AuthPolicy) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and not policy.allows(
                request.headers.get("Authorization")):
            raise HttpError(401, "UNAUTHORIZED", "credentials missing or wrong",
                            headers={"WWW-Authenticate": policy.challenge()})
        return await handler(request)

    return auth


async def _metrics(request: web.Request) -> web.StreamResponse:
    exposition = request.app[_EXPOSITION]
    body, content_type = await asyncio.to_thread(exposition.render,
                                                 request.headers.get("Accept", ""))
    response = web.Response(body=body, headers={"Content-Type": content_type})
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression(web.ContentCoding.gzip)
    return response


def _report_json(source: ReportSource, query: ReportQuery) -> bytes:
    """Build and encode one report (in a worker thread: reports run to megabytes)."""
    return JSON_DUMPS(source.report(query)).encode()


def _shared_report(app: web.Application, query: ReportQuery,
                   key: tuple[str, ...]) -> asyncio.Future[bytes]:
    """The report JSON for ``key``: one computation per identical query in flight.

    Concurrent identical requests (dashboards refreshing together) share one computation
    instead of queueing on the store one after another; each finished report is fresh.
    """
    inflight = app[_INFLIGHT]
    future = inflight.get(key)
    if future is None:
        future = asyncio.ensure_future(asyncio.to_thread(_report_json, app[_REPORTS], query))
        inflight[key] = future

        def forget(done: asyncio.Future[bytes]) -> None:
            inflight.pop(key, None)
            if not done.cancelled():
                done.exception()  # retrieved here, so no waiter left behind warns

        future.add_done_callback(forget)
    return future


async def _report(request: web.Request) -> web.StreamResponse:
    source = request.app[_REPORTS]
    try:
        query = parse_report_query(request.query, accounts=source.accounts,
                                   now=request.app[_CLOCK].now())
        key = tuple((request.query.get(name) or "").strip() for name in REPORT_PARAMETERS)
        # shield: a client that hangs up does not cancel the others' report.
        body = await asyncio.shield(_shared_report(request.app, query, key))
    except UsageError as exc:
        raise HttpError(400, "BAD_PARAMETER", str(exc), parameter=exc.parameter) from None
    except NoDataError as exc:
        raise HttpError(404, "NO_DATA", str(exc)) from None
    except StoreError as exc:
        log.warning("report.store_unavailable", error=str(exc))
        raise HttpError(503, "STORE_UNAVAILABLE", str(exc)) from None
    return web.Response(body=body, content_type="application/json")


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.StreamResponse:
    readiness = request.app[_READINESS]()
    body = {"status": "ready" if readiness.ready else "not ready",
            "accounts": dict(readiness.accounts)}
    return web.json_response(body, status=200 if readiness.ready else 503)


def make_runner(app: web.Application, *,
                header_timeout: float = HEADER_TIMEOUT) -> web.AppRunner:
    """The runner for ``app``, closing connections that send no whole request in time.

    aiohttp has no separate header-read timeout: its ``keepalive_timeout`` (passed through
    the runner to each connection's ``RequestHandler``) starts when a connection is made
    and again after each response, is not reset by a trickle of bytes, and closes the
    connection if no complete request head arrived by then; a request being handled is
    never cut. Its default on a runner is an hour, which let a half-sent request hold a
    connection that long; ``header_timeout`` bounds it.
    """
    return web.AppRunner(app, access_log=None, handle_signals=False,
                         keepalive_timeout=header_timeout)


def build_app(
    *,
    exposition: Exposition,
    reports: ReportSource,
    readiness: Callable[[], Readiness],
    auth: AuthPolicy,
    clock: Clock,
) -> web.Application:
    """The ``serve`` web application; every path but /healthz is guarded by ``auth``."""
    app = web.Application(middlewares=[_error_middleware(), _auth_middleware(auth)])
    app[_EXPOSITION] = exposition
    app[_REPORTS] = reports
    app[_READINESS] = readiness
    app[_CLOCK] = clock
    app[_INFLIGHT] = {}
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/report", _report)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app
