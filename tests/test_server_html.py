"""serve's pages for people: ``GET /`` and ``GET /report.html`` (errors, auth, headers)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import NoDataError, StoreError
from nexus_audit.history.cancel import Cancel
from nexus_audit.service.web import AuthPolicy, Readiness, ReportQuery, build_app

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class _NoMetrics:
    def render(self, accept: str) -> tuple[bytes, str]:
        return b"", "text/plain"


class Pages:
    """Answers the HTML report per account: ``empty`` has no data, ``down`` no store."""

    accounts = ("prod", "empty", "down")

    def __init__(self) -> None:
        self.queries: list[ReportQuery] = []

    def report(self, query: ReportQuery, cancel: Cancel) -> Mapping[str, Any]:
        raise AssertionError("/report.html must not build the JSON")

    def report_html(self, query: ReportQuery, cancel: Cancel) -> bytes:
        self.queries.append(query)
        if query.account == "empty":
            raise NoDataError("no crawls of empty in the window")
        if query.account == "down":
            raise StoreError("cannot read /data/history.duckdb: locked")
        return ("<!DOCTYPE html><title>r</title>" + "x" * 5000).encode()


async def _client(pages: Pages, auth: AuthPolicy | None = None) -> TestClient[Any, Any]:
    app = build_app(exposition=_NoMetrics(), reports=pages,
                    readiness=lambda: Readiness(True, {}), auth=auth or AuthPolicy(),
                    clock=FakeClock(NOW))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_report_html_answers_like_report() -> None:
    """/report.html takes /report's parameters (a bad one is a 400 naming it, an unknown
    one too), answers no data with 404 and a store it cannot read with 503, and serves the
    page gzipped, with its CSP, when the client takes gzip."""
    pages = Pages()
    client = await _client(pages)
    try:
        ok = await client.get("/report.html?since=2d&account=prod",
                              headers={"Accept-Encoding": "gzip"})
        assert ok.status == 200
        assert ok.headers["Content-Type"] == "text/html; charset=utf-8"
        assert ok.headers["Content-Encoding"] == "gzip"
        assert "script-src 'none'" in ok.headers["Content-Security-Policy"]
        assert (await ok.text()).startswith("<!DOCTYPE html>")
        assert pages.queries[-1].account == "prod"
        assert pages.queries[-1].window.since == datetime(2026, 2, 27, 12, tzinfo=UTC)
        for query, status, code in [("since=soon", 400, "BAD_PARAMETER"),
                                    ("format=pdf", 400, "BAD_PARAMETER"),
                                    ("account=nobody", 400, "BAD_PARAMETER"),
                                    ("account=empty", 404, "NO_DATA"),
                                    ("account=down", 503, "STORE_UNAVAILABLE")]:
            response = await client.get(f"/report.html?{query}")
            assert response.status == status, query
            assert (await response.json())["error"]["code"] == code
    finally:
        await client.close()


@pytest.mark.parametrize("path", ["/", "/report.html"])
async def test_pages_need_credentials(path: str) -> None:
    """With auth on, the landing page and the HTML report answer 401 without the token
    and 200 with it."""
    client = await _client(Pages(), AuthPolicy(bearer_token="t0ken"))
    try:
        assert (await client.get(path)).status == 401
        response = await client.get(path, headers={"Authorization": "Bearer t0ken"})
        assert response.status == 200
    finally:
        await client.close()


async def test_landing_page_links_the_endpoints() -> None:
    """/ is a small HTML page linking metrics, the JSON and HTML reports and readiness."""
    client = await _client(Pages())
    try:
        response = await client.get("/")
        assert response.status == 200
        body = await response.text()
        for href in ('href="metrics"', 'href="report?since=30d"', 'href="readyz"',
                     'href="report.html?since=30d"'):
            assert href in body
    finally:
        await client.close()
