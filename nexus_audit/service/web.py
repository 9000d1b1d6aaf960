"""The HTTP side of ``serve``: /metrics, /report, /healthz, /readyz, guarded; ``/`` (a
landing page) and /report.html (the HTML report) for people.

The app is built from injected parts so tests run it with fakes: something that renders
the exposition (:class:`Exposition`), something that builds reports
(:class:`ReportSource`), a readiness probe, an :class:`AuthPolicy` and a clock.

``/metrics`` is served on the event loop from the exposition's cache (worker threads are
shared with commits and snapshot rebuilds; a scrape queued behind them took seconds).
Reports run on a thread pool of their own (:class:`ReportRunner`), at most
``report_concurrency`` distinct reports at once; another distinct one gets 503
``REPORTS_BUSY`` with ``Retry-After``, while a request identical to one in flight shares
its computation. When every client waiting for a report has hung up, its DuckDB query is
interrupted and its slot freed.

Guarding follows Prometheus' exporter web configuration: optional bearer token or basic
auth (compared in constant time), optional TLS (1.2 or later). ``/healthz`` stays open so
liveness probes need no credentials; it reveals nothing but "ok".
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from nexus_audit.config import DEFAULT_REPORT_CONCURRENCY
from nexus_audit.domain.timeutil import Clock
from nexus_audit.errors import NoDataError, StoreError, UsageError
from nexus_audit.history.cancel import Cancel, cancellable
from nexus_audit.logs import get_logger
from nexus_audit.output.html_report import content_security_policy, render_index, stylesheet
from nexus_audit.service.http import (
    DEFAULT_SINCE,
    HEADER_TIMEOUT,
    JSON_DUMPS,
    OPEN_PATHS,
    REPORT_PARAMETERS,
    AuthPolicy,
    Exposition,
    HttpError,
    Readiness,
    ReportQuery,
    ReportSource,
    make_ssl_context,
    parse_report_query,
)

log = get_logger(__name__)

#: The vocabulary, importable from here too.
__all__ = [
    "DEFAULT_SINCE",
    "HEADER_TIMEOUT",
    "JSON_DUMPS",
    "OPEN_PATHS",
    "REPORT_PARAMETERS",
    "AuthPolicy",
    "Exposition",
    "HttpError",
    "Readiness",
    "ReportQuery",
    "ReportRunner",
    "ReportSource",
    "build_app",
    "make_runner",
    "make_ssl_context",
    "parse_report_query",
]



# -- the application -----------------------------------------------------------------------

_EXPOSITION: Final = web.AppKey("exposition", Exposition)
ReadinessProbe = Callable[[], Readiness]
_READINESS: Final[web.AppKey[ReadinessProbe]] = web.AppKey("readiness")
_CLOCK: Final = web.AppKey("clock", Clock)
_RUNNER: Final[web.AppKey[ReportRunner]] = web.AppKey("reports_runner")

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
    accept = request.headers.get("Accept", "")
    gzip = "gzip" in request.headers.get("Accept-Encoding", "")
    cached = exposition.cached(accept, gzip=gzip)
    if cached is not None:
        # The common case, on the loop: no worker thread, which commits may all be using.
        body, content_type = cached
        headers = {"Content-Type": content_type, "Vary": "Accept-Encoding",
                   **({"Content-Encoding": "gzip"} if gzip else {})}
        return web.Response(body=body, headers=headers)
    # A format not rendered for this snapshot yet: once per snapshot and format.
    body, content_type = await asyncio.to_thread(exposition.render, accept)
    response = web.Response(body=body, headers={"Content-Type": content_type})
    if gzip:
        response.enable_compression(web.ContentCoding.gzip)
    return response


@dataclass(eq=False, slots=True)
class _Computation:
    """One report being computed, and how many requests wait for it."""

    future: asyncio.Future[bytes]
    cancel: Cancel
    waiters: int = 0
    #: Whether it still holds a report slot (until it ends, or is cancelled).
    holds_slot: bool = True


class ReportRunner:
    """Computes reports on a thread pool of its own, at most ``slots`` at once.

    Never the loop's default executor: commits and snapshot rebuilds use that one, and
    reports queued there delayed them. Identical concurrent requests share one
    computation; a distinct request while every slot is busy is refused (503 with
    ``Retry-After``: the last report's duration, rounded up) rather than queued, so a
    burst of clients cannot pile up work nobody may still wait for. When the last
    request waiting for a computation goes (its client hung up), the computation is
    cancelled: its DuckDB query interrupted and its slot freed at once (the interrupted
    work ends within moments; a new report may wait that long for a pool thread).
    """

    def __init__(self, source: ReportSource, *, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"report slots must be at least 1, got {slots}")
        self.source = source
        self.slots = slots
        self._executor = ThreadPoolExecutor(max_workers=slots,
                                            thread_name_prefix="nexus-audit-report")
        self._inflight: dict[tuple[str, ...], _Computation] = {}
        self._running = 0
        self._seconds = 1.0  # the last report's duration, for Retry-After

    @property
    def running(self) -> int:
        """The slots in use: computations neither finished nor cancelled."""
        return self._running
    def _free_slot(self, computation: _Computation) -> None:
        if computation.holds_slot:
            computation.holds_slot = False
            self._running -= 1

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the last report's duration (1 to 60)."""
        return max(1, min(60, math.ceil(self._seconds)))

    async def get(self, key: tuple[str, ...], query: ReportQuery, *,
                  html: bool = False) -> bytes:
        """The report JSON for ``query``, or its HTML page (``key`` names identical
        queries; the format is part of it)."""
        key = (*key, "html" if html else "json")
        computation = self._inflight.get(key)
        if computation is None:
            if self._running >= self.slots:
                raise HttpError(
                    503, "REPORTS_BUSY",
                    f"{self.slots} report(s) are being computed, the most at once "
                    "(serve.report_concurrency); retry later", headers={
                        "Retry-After": str(self.retry_after())})
            computation = self._start(key, query, html=html)
        computation.waiters += 1
        try:
            # shield: one client hanging up does not cancel the others' report.
            return await asyncio.shield(computation.future)
        finally:
            computation.waiters -= 1
            if computation.waiters == 0 and not computation.future.done():
                # Everyone asking for it left: stop it rather than finish it for nobody.
                if self._inflight.get(key) is computation:
                    del self._inflight[key]
                computation.cancel.cancel()
                self._free_slot(computation)
                log.info("report.cancelled", since=key[0], until=key[1], account=key[2],
                         reason="every client waiting for it hung up")

    def _start(self, key: tuple[str, ...], query: ReportQuery, *, html: bool) -> _Computation:
        cancel = Cancel()
        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._compute, query, cancel, html)
        computation = _Computation(future, cancel)
        self._inflight[key] = computation
        self._running += 1

        def done(finished: asyncio.Future[bytes]) -> None:
            self._free_slot(computation)
            if self._inflight.get(key) is computation:
                del self._inflight[key]
            # Retrieved here, so a computation nobody waits for any more never warns.
            if not finished.cancelled() and finished.exception() is None:
                self._seconds = time.monotonic() - started

        future.add_done_callback(done)
        return computation

    def _compute(self, query: ReportQuery, cancel: Cancel, html: bool) -> bytes:
        """Build and encode one report (in a report thread: reports run to megabytes)."""
        try:
            with cancellable(cancel):
                if html:
                    return self.source.report_html(query, cancel)
                report = self.source.report(query, cancel)
            return report if isinstance(report, bytes) else JSON_DUMPS(report).encode()
        finally:
            cancel.finished()

    def close(self) -> None:
        """Cancel every computation and let the pool's threads go."""
        for computation in list(self._inflight.values()):
            computation.cancel.cancel()
        self._inflight.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


async def _computed(request: web.Request, *, html: bool) -> bytes:
    """The report a request asks for, by /report's rules: parameters checked, identical
    queries shared, slots bounded (503), cancelled on hang-up; errors as JSON."""
    runner = request.app[_RUNNER]
    try:
        query = parse_report_query(request.query, accounts=runner.source.accounts,
                                   now=request.app[_CLOCK].now())
        key = tuple((request.query.get(name) or "").strip() for name in REPORT_PARAMETERS)
        return await runner.get(key, query, html=html)
    except UsageError as exc:
        raise HttpError(400, "BAD_PARAMETER", str(exc), parameter=exc.parameter) from None
    except NoDataError as exc:
        raise HttpError(404, "NO_DATA", str(exc)) from None
    except StoreError as exc:
        log.warning("report.store_unavailable", error=str(exc))
        raise HttpError(503, "STORE_UNAVAILABLE", str(exc)) from None


async def _report(request: web.Request) -> web.StreamResponse:
    body = await _computed(request, html=False)
    return web.Response(body=body, content_type="application/json")


def _html_response(request: web.Request, page: str) -> web.Response:
    """A page of ours: its CSP also as a header (a second line of defence behind the
    escaping: nothing loads, no script runs), compressed for clients that take gzip (a
    year's report is megabytes of text)."""
    response = web.Response(text=page, content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": content_security_policy(stylesheet()),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    })
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression(web.ContentCoding.gzip)
    return response


async def _index(request: web.Request) -> web.StreamResponse:
    """The landing page: what this service answers, with links (as exporters have)."""
    return _html_response(request, render_index())


async def _report_html(request: web.Request) -> web.StreamResponse:
    """The HTML report: /report's parameters, rules and errors, as a page."""
    page = (await _computed(request, html=True)).decode("utf-8")
    return _html_response(request, page)


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
    # handler_cancellation: a client hanging up cancels its handler, so a report nobody
    # waits for any more is interrupted (see ReportRunner).
    return web.AppRunner(app, access_log=None, handle_signals=False,
                         keepalive_timeout=header_timeout, handler_cancellation=True)


def build_app(
    *,
    exposition: Exposition,
    reports: ReportSource,
    readiness: Callable[[], Readiness],
    auth: AuthPolicy,
    clock: Clock,
    report_concurrency: int = DEFAULT_REPORT_CONCURRENCY,
) -> web.Application:
    """The ``serve`` web application; every path but /healthz is guarded by ``auth``.

    At most ``report_concurrency`` distinct reports are computed at once (see
    :class:`ReportRunner`). Run it with ``handler_cancellation=True`` (as aiohttp's test
    server does), so a client hanging up cancels its handler and so its report.
    """
    app = web.Application(middlewares=[_error_middleware(), _auth_middleware(auth)])
    app[_EXPOSITION] = exposition
    app[_READINESS] = readiness
    app[_CLOCK] = clock
    runner = app[_RUNNER] = ReportRunner(reports, slots=report_concurrency)

    async def close_reports(_: web.Application) -> None:
        runner.close()

    app.on_cleanup.append(close_reports)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/report", _report)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/", _index)
    app.router.add_get("/report.html", _report_html)
    return app
