"""Cursor pagination: walk one chain of pages to its end, or fail loudly.

Always ``limit=100`` (the API's maximum, so the fewest requests). The cursor goes back as
the ``cursor`` query parameter; the walk ends when ``next_cursor`` is null or absent. A
cursor that comes back a second time is an error, never a loop.

A 2xx page of the wrong shape (no ``pagination`` where one is required, a list key that is
not a list, a malformed ``pagination``) is re-read once with the same cursor: it costs
one request and turns a glitch of one response into a complete walk. A second bad page
raises :class:`~nexus_audit.errors.ProtocolError`.

Hostile sizes: a paged answer with more items than the ``limit`` asked for fails the walk
(:class:`~nexus_audit.errors.PageTooLargeError`), and so does a chain that runs past the
pages its largest announced total allows, ``ceil(total / limit)`` plus a slack of
:data:`PAGE_SLACK_SHARE` of that (at least :data:`PAGE_SLACK_MIN` pages) for churn
(:class:`~nexus_audit.errors.WalkTooLongError`); no chain, whatever total it announces
(none, or an absurd one), runs past :data:`MAX_PAGES_WITHOUT_TOTAL`.
Fresh cursors with empty pages stop there.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from nexus_audit.api.client import Reply
from nexus_audit.errors import CrawlError, PageTooLargeError, ProtocolError, WalkTooLongError

PAGE_LIMIT: Final = 100
#: The longest cursor followed (the reference's sample is 32 characters).
MAX_CURSOR: Final = 4096
#: Pages a walk may take beyond what its largest announced total needs: churn adds pages.
PAGE_SLACK_SHARE: Final = 0.1
PAGE_SLACK_MIN: Final = 10
#: Pages allowed to a chain that never announces a total (a million records at 100).
MAX_PAGES_WITHOUT_TOTAL: Final = 10_000


def max_pages(total: int | None, limit: int) -> int:
    """Pages a walk may take when the largest total it was told is ``total``."""
    if total is None:
        return MAX_PAGES_WITHOUT_TOTAL
    need = math.ceil(total / limit)
    # An absurd total (10**18) must not lift the bound: no chain runs past the ceiling
    # a chain without a total gets, whatever it announces.
    return min(MAX_PAGES_WITHOUT_TOTAL,
               need + max(PAGE_SLACK_MIN, math.ceil(need * PAGE_SLACK_SHARE)))


class RepeatedCursorError(CrawlError):
    """The API handed out a cursor it had already given in this walk."""

    code = "REPEATED_CURSOR"


class JsonGetter(Protocol):
    """What a walk needs from the client."""

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Reply:
        """GET a JSON object, with the response headers."""

    def count_retry(self, endpoint: str, reason: str) -> None:
        """Count a retry."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page: its raw items, the next cursor (None at the end), the reported total, and
    the answer's request id (``X-Request-Id``, if it had one)."""

    items: list[Any]
    next_cursor: str | None
    total: int | None
    request_id: str | None = None


def parse_page(payload: Mapping[str, Any], list_key: str, *, paginated: bool,
               request_id: str | None = None) -> Page:
    """Check one page's shape and take it apart; :class:`ProtocolError` if it is wrong.

    ``paginated`` says the endpoint must carry ``pagination`` (``/instances``); without
    it (``/buckets``), a page without ``pagination`` is the whole list. ``request_id``
    goes into the page, or into the error.
    """
    def wrong(message: str) -> ProtocolError:
        return ProtocolError(message, request_id=request_id)

    items = payload.get(list_key)
    if not isinstance(items, list):
        found = "missing" if items is None else f"a {type(items).__name__}"
        raise wrong(f"page without a '{list_key}' list ({found})")
    pagination = payload.get("pagination")
    if pagination is None:
        if paginated:
            raise wrong(f"'{list_key}' page without 'pagination'")
        return Page(items, None, None, request_id)
    if not isinstance(pagination, dict):
        raise wrong("'pagination' is not an object")
    cursor = pagination.get("next_cursor")
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise wrong(f"'next_cursor' must be a non-empty string or null, got {cursor!r:.80}")
    if cursor is not None and len(cursor) > MAX_CURSOR:
        # Every cursor of a walk is kept (to refuse one that repeats) and sent back in a URL.
        raise wrong(f"'next_cursor' is {len(cursor):,} characters long, more than "
                    f"{MAX_CURSOR:,}")
    total = pagination.get("total")
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
        raise wrong(f"'pagination.total' must be a non-negative integer, got {total!r}")
    return Page(items, cursor, total, request_id)


class CursorWalk:
    """One cursor chain over a list endpoint; iterate it for each page's raw items.

    After the walk, ``first_total`` and ``last_total`` hold ``pagination.total`` of the
    first and the last page (None if the endpoint does not page) and ``pages`` the count.
    """

    def __init__(
        self,
        client: JsonGetter,
        path: str,
        list_key: str,
        params: Mapping[str, str] | None = None,
        *,
        paginated: bool = True,
        limit: int = PAGE_LIMIT,
    ) -> None:
        self.client = client
        self.path = path
        self.list_key = list_key
        self.params = dict(params or {})
        self.paginated = paginated
        self.limit = limit
        self.first_total: int | None = None
        self.last_total: int | None = None
        self.pages = 0
        self.items = 0
        #: The largest ``pagination.total`` any page announced (bounds the pages).
        self.max_total: int | None = None
        #: The request id of the last page's answer (``X-Request-Id``), if it had one.
        self.request_id: str | None = None

    @property
    def endpoint(self) -> str:
        """``GET /instances`` and the like."""
        return f"GET {self.path}"

    def describe(self) -> str:
        """The chain for messages: the endpoint and its filters (never a cursor)."""
        filters = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.endpoint} ({filters})" if filters else self.endpoint

    async def fetch_page(self, cursor: str | None) -> Page:
        query = {**self.params, "limit": str(self.limit)}
        if cursor is not None:
            query["cursor"] = cursor
        reply = await self.client.get(self.path, query)
        try:
            return self._parse(reply)
        except ProtocolError:
            self.client.count_retry(self.endpoint, "protocol")
        reply = await self.client.get(self.path, query)
        try:
            return self._parse(reply)
        except ProtocolError as exc:
            raise ProtocolError(f"CloudNexus sent a malformed page twice: {exc.message}",
                                endpoint=self.endpoint, request_id=exc.request_id) from None

    def _parse(self, reply: Reply) -> Page:
        page = parse_page(reply.payload, self.list_key, paginated=self.paginated,
                          request_id=reply.request_id)
        paged = page.next_cursor is not None or "pagination" in reply.payload
        if paged and len(page.items) > self.limit:
            # Not a shape glitch to re-read: a server that ignores the limit is hostile
            # (a 50 MB page of one repeated id), so the walk fails at once.
            raise PageTooLargeError(
                f"{self.describe()}: CloudNexus sent {len(page.items):,} items in a page "
                f"asked for at most {self.limit}", request_id=reply.request_id)
        return page

    async def __aiter__(self) -> AsyncIterator[list[Any]]:
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            page = await self.fetch_page(cursor)
            self.pages += 1
            self.items += len(page.items)
            self.request_id = page.request_id
            if self.pages == 1:
                self.first_total = page.total
            self.last_total = page.total
            if page.total is not None:
                self.max_total = max(self.max_total or 0, page.total)
            yield page.items
            if page.next_cursor is None:
                return
            allowed = max_pages(self.max_total, self.limit)
            if self.pages >= allowed:
                raise WalkTooLongError(
                    f"{self.describe()}: CloudNexus kept handing out cursors after {self.pages:,} "
                    f"pages ({self.items:,} items), more than the {allowed:,} its total of "
                    f"{self.max_total if self.max_total is not None else 'nothing'} allows; "
                    "stopped", request_id=page.request_id)
            if page.next_cursor in seen:
                raise RepeatedCursorError(
                    f"{self.describe()}: CloudNexus repeated a cursor after {self.pages} pages; "
                    "stopped instead of looping", request_id=page.request_id,
                )
            seen.add(page.next_cursor)
            cursor = page.next_cursor


async def fetch_total(client: JsonGetter, path: str, list_key: str,
                      params: Mapping[str, str] | None = None) -> int:
    """The ``pagination.total`` of a list, read with one cheap ``limit=1`` request."""
    walk = CursorWalk(client, path, list_key, params, limit=1)
    page = await walk.fetch_page(None)
    if page.total is None:
        raise ProtocolError(f"'{list_key}' page without 'pagination.total'",
                            endpoint=walk.endpoint)
    return page.total
