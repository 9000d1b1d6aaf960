"""The HTML report in a real browser: Debian's headless Chromium, driven by Playwright.

One browser for the module; the page opened from a file (as a reviewer opens an
attachment) and served by ``serve``'s app (/ and /report.html, behind a bearer token).
Playwright drives the machine's /usr/bin/chromium (installed by .ci/run); it never
downloads a browser. Screenshots of each section go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, sync_playwright

from nexus_audit.config import AccountConfig, Secret, Settings
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import FakeClock, isoformat
from nexus_audit.history.store import Store
from nexus_audit.output.html_report import money, render_html, size, visible
from nexus_audit.service.reports import StoreReports
from nexus_audit.service.web import AuthPolicy, Readiness, build_app
from tests.html_fixtures import HOSTILE, UNTIL, WINDOW, make_history, report

CHROMIUM = os.environ.get("NEXUS_AUDIT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"
TOKEN = "browser-test-token"
SECTIONS = ("summary", "crawls", "inventory", "cost", "drift", "exposure", "stale")
FIRST_PAINT_GOAL_MS = 2000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for the module's tests."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two weeks' database, hostile account included."""
    path = tmp_path_factory.mktemp("browser") / "h.duckdb"
    make_history(path).close()
    return path


@pytest.fixture(scope="module")
def expected(db: Path) -> dict[str, Any]:
    """The JSON report (with series) the pages must agree with."""
    store = Store(db)
    try:
        return report(store).to_json_dict()
    finally:
        store.close()


@pytest.fixture(scope="module")
def page_file(db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML report written to a file."""
    store = Store(db)
    try:
        path = tmp_path_factory.mktemp("page") / "report.html"
        path.write_text(render_html(report(store)), encoding="utf-8")
        return path
    finally:
        store.close()


class _NoMetrics:
    """The exposition is not under test here."""

    def render(self, accept: str) -> tuple[bytes, str]:
        return b"", "text/plain; version=0.0.4; charset=utf-8"


@pytest.fixture(scope="module")
def served(db: Path) -> Iterator[str]:
    """serve's web app over the database, on a free loopback port, in a thread of its own
    (Playwright's sync API owns the test's thread); stopped at the module's end."""
    settings = Settings(accounts=(AccountConfig(name="prod", api_key=Secret("k1")),
                                  AccountConfig(name="evil", api_key=Secret("k2"))),
                        db_path=db, max_gap=timedelta(hours=6),
                        stale_after=timedelta(days=2))
    reports_store = Store(db)
    reports = StoreReports(reports_store, settings, load_pricing(), FakeClock(UNTIL))
    app = build_app(exposition=_NoMetrics(), reports=reports,
                    readiness=lambda: Readiness(True, {}),
                    auth=AuthPolicy(bearer_token=TOKEN), clock=FakeClock(UNTIL))
    ready: queue.Queue[str] = queue.Queue()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            ready.put(f"http://{host}:{port}")
            await stop.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        yield ready.get(timeout=30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
        reports_store.close()


@dataclass
class Watch:
    """What a page did: every request, console errors, uncaught errors."""

    allowed: set[str]
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        """Route every request (failing all but the page itself) and listen for errors."""
        page.route("**/*", self._route)
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def _route(self, route: Route, request: Request) -> None:
        if request.url in self.allowed:
            route.continue_()
        else:
            route.abort()

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"console {message.type}: {message.text}")


def _check_page(page: Page, watch: Watch, expected: dict[str, Any], name: str) -> None:
    """Everything a page must show and must not do (see the module's tests)."""
    assert set(watch.requests) <= watch.allowed, f"requests left the page: {watch.requests}"
    assert page.evaluate("performance.getEntriesByType('resource').length") == 0
    assert watch.errors == []
    # Nothing hostile ran or became an element; it all reads as text.
    assert page.evaluate("window.__pwned === undefined")
    assert page.evaluate(
        "document.querySelectorAll('script, img, iframe, object, embed, "
        "[onload], [onerror]').length") == 0
    text = page.inner_text("body")
    for value in HOSTILE:
        assert visible(value) in text, value
    # The JSON report's figures.
    inv, cost = expected["inventory"], expected["cost"]
    figures = [f"Instances\n{inv['instances']['total']}",
               f"Buckets\n{inv['buckets']['total']}", size(inv["buckets"]["size_bytes"])]
    for part in ("total", "compute", "storage"):
        figures += [money(cost["accrued"][part]), money(cost["run_rate_hourly"][part])]
    for region, amount in cost["accrued"]["by_region"].items():
        figures += [f"region {region}", money(amount)]
    for figure in figures:
        assert figure in text, figure
    exact = page.evaluate("[...document.querySelectorAll('#cost data')].map(d => +d.value)")
    assert exact == [cost[p][k] for k in ("total", "compute", "storage")
                     for p in ("accrued", "run_rate_hourly")]
    public = page.locator("table.public tbody tr")
    assert public.count() == len(expected["public_buckets"])
    for bucket in expected["public_buckets"]:
        assert visible(bucket["id"]) in public.all_inner_texts()[
            [b["id"] for b in expected["public_buckets"]].index(bucket["id"])]
    assert page.locator("table.exposures tbody tr").count() == len(expected["exposures"])
    assert page.locator("table.drift tbody tr:not(.day)").count() == len(expected["drift"])
    # One mark per point of each series, one per exposure window.
    series = expected["series"]
    counts = {"cost": len(series["cost"]), "instances": len(series["instances"]),
              "buckets": len(series["buckets"]), "bytes": len(series["buckets"]),
              "drift": len(series["drift"]), "exposures": len(expected["exposures"])}
    for chart, n in counts.items():
        assert n > 0, chart
        assert page.locator(f"#chart-{chart} g.mark").count() == n, chart
    # An ongoing exposure reaches the plot's right edge.
    ongoing = page.evaluate("""[...document.querySelectorAll('#chart-exposures rect.ongoing')]
        .map(r => +r.getAttribute('x') + +r.getAttribute('width'))""")
    right = float(page.locator("#chart-exposures line.axis-line").get_attribute("x2") or 0)
    assert ongoing
    assert all(abs(x - right) < 0.2 for x in ongoing)
    ARTIFACTS.mkdir(exist_ok=True)
    for section in SECTIONS:
        page.locator(f"#{section}").screenshot(path=ARTIFACTS / f"{name}-{section}.png")


def _first_paint(page: Page) -> float:
    paint = page.evaluate("""() => new Promise(done => new PerformanceObserver((list, obs) => {
        const e = list.getEntries().find(e => e.name === 'first-contentful-paint');
        if (e) { obs.disconnect(); done(e.startTime); }
    }).observe({type: 'paint', buffered: true}))""")
    return float(paint)


def test_report_file_in_chromium(browser: Browser, page_file: Path,
                                 expected: dict[str, Any]) -> None:
    """Opened from a file, the report loads nothing, logs no error, runs no hostile
    value, shows the JSON report's figures and every public bucket, draws one mark per
    point, and paints first within 2 s."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    watch = Watch(allowed={page_file.as_uri()})
    watch.attach(page)
    page.goto(page_file.as_uri())
    paint = _first_paint(page)
    print(f"first contentful paint: {paint:.0f} ms (goal < {FIRST_PAINT_GOAL_MS} ms)")
    assert paint < FIRST_PAINT_GOAL_MS
    _check_page(page, watch, expected, "file")
    # The page as a reader first sees it (README's docs/html-report.png is a copy).
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=ARTIFACTS / "file-top.png")
    # Printed (to PDF, as a reviewer attaches it): A4 pages, each section on a page of
    # its own, no navigation.
    pdf = page.pdf(prefer_css_page_size=True, print_background=True)
    (ARTIFACTS / "report.pdf").write_bytes(pdf)
    boxes = re.findall(rb"/MediaBox\s*\[0 0 ([\d.]+) ([\d.]+)\]", pdf)
    assert len(boxes) >= len(SECTIONS) - 1  # the header shares the first page
    assert {(round(float(w)), round(float(h))) for w, h in boxes} == {(595, 842)}
    page.emulate_media(media="print")
    assert not page.locator("nav").is_visible()
    page.close()


def test_served_report_and_landing_page(browser: Browser, served: str,
                                        expected: dict[str, Any]) -> None:
    """serve's / links the endpoints; /report.html (bearer token, /report's parameters)
    is the same page, with its CSP as a header; without the token both answer 401."""
    since, until = isoformat(WINDOW.since), isoformat(WINDOW.until)
    url = f"{served}/report.html?since={since}&until={until}"
    for path in ("/", url.removeprefix(served)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(served + path, timeout=10)  # noqa: S310 - loopback
        assert refused.value.code == 401
    context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {TOKEN}"},
                                  viewport={"width": 1200, "height": 900})
    page = context.new_page()
    watch = Watch(allowed={f"{served}/", url})
    watch.attach(page)
    landing = page.goto(f"{served}/")
    assert landing is not None
    assert landing.status == 200
    hrefs = page.evaluate("[...document.querySelectorAll('a')].map(a => a.href)")
    for endpoint in ("/metrics", "/report?", "/readyz", "/report.html?"):
        assert any(h.startswith(served + endpoint) for h in hrefs), endpoint
    response = page.goto(url)
    assert response is not None
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    _check_page(page, watch, expected, "served")
    watch.allowed.add(f"{served}/report.html?since=soon")
    bad = page.goto(f"{served}/report.html?since=soon")
    assert bad is not None
    assert bad.status == 400
    assert json.loads(page.inner_text("body"))["error"]["parameter"] == "since"
    context.close()
