"""Pytest plugin: a deliberately misbehaving CloudNexus v2 server (registered by conftest).

The simulator stays faithful to the provider's reference; this one says whatever a test
tells it to. Each endpoint (``/v2/instances``, ``/v2/buckets``, or any other path) answers
through a handler the test sets: a cursor chain of pages (:meth:`HostileApi.pages`), a
script of raw answers (:meth:`HostileApi.script`), or any function of the request. An
:class:`Answer` sets the status, headers (``X-RateLimit-*``, ``X-Request-Id``), a JSON body
(``NaN`` and ``Infinity`` allowed, as Python's json writes them), raw bytes, or a streamed
body that may never end.

- ``hostile_api``: factory, ``api = await hostile_api()`` starts one on a free loopback
  port; every server started is stopped after the test.
- ``hostile_thread``: one serving from its own thread, for synchronous tests that run the
  CLI (``main([...])`` or a ``nexus-audit`` subprocess) against it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

#: The key the server expects (and that tests give the client).
HOSTILE_KEY = "hk_live_0123456789abcdefSECRET"


@dataclass(slots=True)
class Answer:
    """One HTTP answer: a JSON body (``payload``), raw bytes (``body``) or a stream."""

    status: int = 200
    payload: Any = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Chunks written one by one (an endless generator makes an endless body).
    stream: Callable[[], Iterator[bytes]] | None = None

    def data(self) -> bytes:
        """The body as bytes (JSON written with NaN/Infinity allowed)."""
        if self.body is not None:
            return self.body
        if self.payload is None:
            return b""
        return json.dumps(self.payload, allow_nan=True).encode()


Handler = Callable[[Mapping[str, str]], Answer]


def page(key: str, items: Sequence[Any], *, cursor: str | None, total: int | None,
         request_id: str | None = None, headers: Mapping[str, str] | None = None) -> Answer:
    """One list page with ``pagination`` (``total`` None leaves it out)."""
    pagination: dict[str, Any] = {"next_cursor": cursor}
    if total is not None:
        pagination["total"] = total
    extra = {} if request_id is None else {"X-Request-Id": request_id}
    extra.update(headers or {})  # the test's headers win
    return Answer(payload={key: list(items), "pagination": pagination}, headers=extra)


class HostileApi:
    """A CloudNexus-like server on loopback whose every answer a test decides."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        #: Every request as (path without /v2, query).
        self.requests: list[tuple[str, dict[str, str]]] = []
        #: Bytes written by streamed answers (an endless body stops when the client leaves).
        self.streamed = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The API base URL (``http://127.0.0.1:PORT/v2``)."""
        return f"http://127.0.0.1:{self.port}/v2"

    def on(self, path: str, handler: Handler) -> None:
        """Answer ``GET``/``PUT`` on ``/v2{path}`` with ``handler(query)``."""
        self.handlers[path] = handler

    def script(self, path: str, answers: Sequence[Answer]) -> None:
        """Answer ``path`` with ``answers`` in turn, the last one repeating."""
        counter = itertools.count()

        def handler(query: Mapping[str, str]) -> Answer:
            return answers[min(next(counter), len(answers) - 1)]

        self.on(path, handler)

    def pages(self, path: str, key: str, pages: Sequence[Sequence[Any]], *,
              totals: Sequence[int | None] | int | None = None,
              headers: Mapping[str, str] | None = None) -> None:
        """Serve ``pages`` as one cursor chain (cursor ``c1``, ``c2``...), whatever the
        filters. ``totals``: one per page, one for all, or None for the true count. Each
        page's ``X-Request-Id`` is ``req-<key>-<n>`` (n from 0) unless ``headers`` set it.
        A ``limit=1`` request (a probe for the total) gets the first item and total."""
        count = sum(len(p) for p in pages)
        per_page = (list(totals) if isinstance(totals, Sequence)
                    else [count if totals is None else totals] * len(pages))

        def handler(query: Mapping[str, str]) -> Answer:
            cursor = query.get("cursor")
            n = int(cursor[1:]) if cursor else 0
            if query.get("limit") == "1":  # a probe for the total: the first page's total
                return page(key, list(pages[0])[:1], cursor="c1" if count > 1 else None,
                            total=per_page[0], request_id=f"req-{key}-probe",
                            headers=headers)
            nxt = f"c{n + 1}" if n + 1 < len(pages) else None
            return page(key, pages[n], cursor=nxt, total=per_page[n],
                        request_id=f"req-{key}-{n}", headers=headers)

        self.on(path, handler)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/v2")
        query = dict(request.query)
        self.requests.append((path, query))
        if request.headers.get("Authorization") != f"Bearer {HOSTILE_KEY}":
            return web.json_response({"error": {"code": "UNAUTHORIZED", "message": "bad key"}},
                                     status=401)
        handler = self.handlers.get(path)
        if handler is None:
            return web.json_response({"error": {"code": "NOT_FOUND", "message": path}},
                                     status=404)
        answer = handler(query)
        if answer.stream is None:
            return web.Response(status=answer.status, body=answer.data(),
                                headers={"Content-Type": "application/json", **answer.headers})
        response = web.StreamResponse(status=answer.status,
                                      headers={"Content-Type": "application/json",
                                               **answer.headers})
        await response.prepare(request)
        try:
            for chunk in answer.stream():
                await response.write(chunk)
                self.streamed += len(chunk)
        except (ConnectionResetError, RuntimeError):
            pass  # the client hung up, as it should on an endless body
        return response

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class HostileThread:
    """A :class:`HostileApi` serving from its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self.api = HostileApi()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hostile-api",
                                        daemon=True)

    def start(self) -> HostileApi:
        """Start serving; returns the server once its port is bound."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.api.start(), self._loop).result(10)
        return self.api

    def stop(self) -> None:
        """Stop serving and join the thread."""
        asyncio.run_coroutine_threadsafe(self.api.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


MakeHostile = Callable[[], Awaitable[HostileApi]]


@pytest.fixture
async def hostile_api() -> AsyncIterator[MakeHostile]:
    """Factory: ``api = await hostile_api()`` starts a hostile server; stopped at teardown."""
    started: list[HostileApi] = []

    async def factory() -> HostileApi:
        api = HostileApi()
        await api.start()
        started.append(api)
        return api

    yield factory
    for api in reversed(started):
        await api.stop()


@pytest.fixture
def hostile_thread() -> Iterator[HostileApi]:
    """A hostile server in its own thread (for tests that run the CLI); stopped after."""
    runner = HostileThread()
    api = runner.start()
    try:
        yield api
    finally:
        runner.stop()
