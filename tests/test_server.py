"""The web app of ``serve``: routes, JSON errors, parameter checks, auth, TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from gzip import compress as gzip_compress
from gzip import decompress as gzip_decompress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from nexus_audit.config import Secret, WebConfig
from nexus_audit.domain.timeutil import FakeClock
from nexus_audit.errors import ConfigError, NoDataError, StoreError, UsageError
from nexus_audit.history.cancel import Cancel
from nexus_audit.service.web import (
    AuthPolicy,
    Readiness,
    ReportQuery,
    ReportRunner,
    build_app,
    make_runner,
    make_ssl_context,
    parse_report_query,
)
from tests.ci import skip_or_fail

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeExposition:
    """Renders a fixed body and remembers the Accept headers it saw."""

    def __init__(self) -> None:
        self.accepts: list[str] = []

    def cached(self, accept: str, *, gzip: bool = False) -> tuple[bytes, str] | None:
        self.accepts.append(accept)
        body = b"nexus_up 1\n"
        return (gzip_compress(body) if gzip else body), "text/plain; version=0.0.4; charset=utf-8"

    def render(self, accept: str) -> tuple[bytes, str]:
        raise AssertionError("everything is cached: never rendered in a worker thread")


class FakeReports:
    """Answers reports for two accounts; ``empty`` has no data."""

    accounts = ("prod", "empty")

    def __init__(self) -> None:
        self.queries: list[ReportQuery] = []

    def report(self, query: ReportQuery, cancel: Cancel) -> Mapping[str, Any]:
        self.queries.append(query)
        if query.account == "empty":
            raise NoDataError("no crawls of empty in the window")
        return {"window": {"since": query.window.since.isoformat()}, "accounts": ["prod"]}


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Factory for a test client of the app with the given auth and readiness."""
    clients: list[TestClient[Any, Any]] = []

    async def factory(auth: AuthPolicy | None = None, ready: bool = True,
                      reports: FakeReports | None = None) -> TestClient[Any, Any]:
        app = build_app(
            exposition=FakeExposition(),
            reports=reports or FakeReports(),
            readiness=lambda: Readiness(ready, {"prod": {"ready": ready}}),
            auth=auth or AuthPolicy(),
            clock=FakeClock(NOW),
        )
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


async def test_healthz_answers_ok(make_client: ClientFactory) -> None:
    """/healthz answers 200 "ok" while the process runs."""
    client = await make_client()
    response = await client.get("/healthz")
    assert response.status == 200
    assert (await response.text()).strip() == "ok"


async def test_metrics_serves_the_exposition_with_its_content_type(
        make_client: ClientFactory) -> None:
    """/metrics returns the rendered body and passes the Accept header to the renderer."""
    client = await make_client()
    response = await client.get("/metrics", headers={"Accept": "text/plain"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert await response.read() == b"nexus_up 1\n"


async def test_readyz_is_503_with_reasons_when_not_ready(make_client: ClientFactory) -> None:
    """/readyz is 503 with a JSON reason per account until crawls are recent."""
    client = await make_client(ready=False)
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body == {"status": "not ready", "accounts": {"prod": {"ready": False}}}
    ready = await (await make_client(ready=True)).get("/readyz")
    assert ready.status == 200


async def test_unknown_path_is_a_json_404(make_client: ClientFactory) -> None:
    """Unknown paths get 404 with a JSON error body."""
    client = await make_client()
    response = await client.get("/nope")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "NOT_FOUND"


async def test_wrong_method_is_a_json_405(make_client: ClientFactory) -> None:
    """POST to a GET endpoint is 405 with a JSON body and an Allow header."""
    client = await make_client()
    response = await client.post("/report")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]
    assert (await response.json())["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_report_passes_the_parsed_window(make_client: ClientFactory) -> None:
    """/report?since=7d asks for the seven days before now and returns the JSON."""
    reports = FakeReports()
    client = await make_client(reports=reports)
    response = await client.get("/report", params={"since": "7d", "until": "",
                                                   "stale_after": "3d"})
    assert response.status == 200
    assert (await response.json())["accounts"] == ["prod"]
    (query,) = reports.queries
    assert query.window.since == NOW - timedelta(days=7)
    assert query.window.until == NOW
    assert query.stale_after == timedelta(days=3)
    assert query.account is None


@pytest.mark.parametrize(("params", "parameter"), [
    ({"since": "yesterday"}, "since"),
    ({"since": "0d"}, "since"),
    ({"until": "2026-13-01"}, "until"),
    ({"until": "2027-01-01T00:00:00Z"}, "until"),
    ({"account": "nobody"}, "account"),
    ({"stale_after": "soon"}, "stale_after"),
    ({"format": "csv"}, "format"),
])
async def test_report_bad_parameters_are_400_naming_the_parameter(
        make_client: ClientFactory, params: dict[str, str], parameter: str) -> None:
    """Every malformed or unknown parameter is a 400 BAD_PARAMETER naming it."""
    client = await make_client()
    response = await client.get("/report", params=params)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "BAD_PARAMETER"
    assert error["parameter"] == parameter
    assert error["message"]


async def test_report_without_data_is_a_json_404(make_client: ClientFactory) -> None:
    """A report with nothing to show is 404 NO_DATA, not a 500."""
    client = await make_client()
    response = await client.get("/report", params={"account": "empty"})
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "NO_DATA"


def test_repeated_parameter_is_refused() -> None:
    """A parameter given twice is a usage error naming it (no silent pick)."""
    from multidict import MultiDict

    with pytest.raises(UsageError) as info:
        parse_report_query(MultiDict([("since", "1d"), ("since", "2d")]), accounts=(),
                           now=NOW)
    assert info.value.parameter == "since"


def test_empty_parameters_mean_defaults() -> None:
    """since, until, account and stale_after left empty take their defaults (30d, now, all)."""
    query = parse_report_query({"since": "", "until": "", "account": "", "stale_after": ""},
                               accounts=("prod",), now=NOW)
    assert query.window.since == NOW - timedelta(days=30)
    assert query.window.until == NOW
    assert query.account is None
    assert query.stale_after is None


# -- auth --------------------------------------------------------------------------------

BEARER = AuthPolicy(bearer_token="tok-3f9a1c")
BASIC = AuthPolicy(basic_user="ops", basic_password="pa:ss-word")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("path", ["/metrics", "/report", "/readyz", "/nope"])
async def test_bearer_auth_guards_everything_but_healthz(
        make_client: ClientFactory, path: str) -> None:
    """With a bearer token, every path but /healthz needs it (unknown paths too)."""
    client = await make_client(auth=BEARER)
    response = await client.get(path)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["error"]["code"] == "UNAUTHORIZED"
    assert (await client.get("/healthz")).status == 200
    wrong = await client.get(path, headers={"Authorization": "Bearer tok-3f9a1d"})
    assert wrong.status == 401
    right = await client.get(path, headers={"Authorization": "Bearer tok-3f9a1c"})
    assert right.status != 401


async def test_basic_auth_needs_user_and_password(make_client: ClientFactory) -> None:
    """Basic auth accepts the right pair only (a colon in the password is fine)."""
    client = await make_client(auth=BASIC)
    assert (await client.get("/metrics")).status == 401
    for user, password in [("ops", "wrong"), ("nobody", "pa:ss-word"), ("", "")]:
        response = await client.get("/metrics", headers={"Authorization": _basic(user, password)})
        assert response.status == 401
    ok = await client.get("/metrics", headers={"Authorization": _basic("ops", "pa:ss-word")})
    assert ok.status == 200


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Basic !!!notbase64", "Basic " + base64.b64encode(b"nocolon").decode(),
    "Digest abc", "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    "Bearer t0ken\udcff", "Basic \udcff\udcfe", "Basic é", "\udcffBearer t0ken",
])
def test_malformed_authorization_headers_are_refused(header: str | None) -> None:
    """Garbage Authorization headers never grant access (and never raise)."""
    policy = AuthPolicy(bearer_token="t0ken", basic_user="nocolon", basic_password="")
    assert policy.allows(header) is False


def test_policy_from_web_config_and_disabled_default() -> None:
    """No credentials configured means open; configured secrets are revealed to the policy."""
    assert AuthPolicy.from_web(WebConfig()).allows(None)
    policy = AuthPolicy.from_web(WebConfig(bearer_token=Secret("abc-123")))
    assert policy.enabled
    assert policy.allows("Bearer abc-123")
    assert "abc-123" not in repr(WebConfig(bearer_token=Secret("abc-123")))


# -- TLS ---------------------------------------------------------------------------------


def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        skip_or_fail("the openssl binary is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_ssl_context_requires_tls12(tmp_path: Path) -> None:
    """The server context refuses anything older than TLS 1.2."""
    cert, key = make_self_signed(tmp_path)
    context = make_ssl_context(cert, key)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_unusable_tls_files_are_config_errors(tmp_path: Path) -> None:
    """A missing, garbage or huge certificate or key is a ConfigError naming the setting."""
    with pytest.raises(ConfigError, match="tls_cert_file"):
        make_ssl_context(tmp_path / "missing.pem", tmp_path / "missing-key.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="tls_cert_file"):
        make_ssl_context(garbage, garbage)
    # a huge file (a sparse disk image of 17 MiB) named by mistake: refused unread
    image = tmp_path / "disk.img"
    with image.open("wb") as handle:
        handle.truncate(17 * 1024 * 1024)
    cert, _ = make_self_signed(tmp_path)
    with pytest.raises(ConfigError, match=r"serve.tls_key_file: .* not a PEM file"):
        make_ssl_context(cert, image)


def test_a_missing_tls_key_is_named(tmp_path: Path) -> None:
    """A missing key file is named in the error (it once said "None does not exist")."""
    cert, _ = make_self_signed(tmp_path)
    missing = tmp_path / "gone.key"
    with pytest.raises(ConfigError) as caught:
        make_ssl_context(cert, missing)
    assert str(caught.value) == f"serve.tls_key_file: {missing} does not exist (or is not a file)"


async def test_app_serves_over_tls(tmp_path: Path) -> None:
    """With a certificate, the app answers HTTPS and a client trusting the cert gets 200."""
    cert, key = make_self_signed(tmp_path)
    app = build_app(exposition=FakeExposition(), reports=FakeReports(),
                    readiness=lambda: Readiness(True), auth=AuthPolicy(), clock=FakeClock(NOW))
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=make_ssl_context(cert, key))
        await site.start()
        port = runner.addresses[0][1]
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/healthz", ssl=trust) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as plain:
                    await plain.read()
    finally:
        await runner.cleanup()


async def test_identical_concurrent_reports_share_one_computation() -> None:
    """Two identical report queries in flight share one build; a different one gets its own."""
    gate = threading.Event()

    class Blocking(FakeReports):
        def report(self, query: ReportQuery, cancel: Cancel) -> Mapping[str, Any]:
            gate.wait(5)
            return super().report(query, cancel)

    reports = Blocking()
    runner = ReportRunner(reports, slots=2)
    query = parse_report_query({"since": "7d"}, accounts=("prod",), now=NOW)
    try:
        first = asyncio.ensure_future(runner.get(("7d", "", "", ""), query))
        second = asyncio.ensure_future(runner.get(("7d", "", "", ""), query))
        other = asyncio.ensure_future(runner.get(("8d", "", "", ""), query))
        await asyncio.sleep(0)  # each has started or joined its computation
        assert runner.running == 2
        gate.set()
        assert await first == await second
        assert json.loads(await other)["accounts"] == ["prod"]
        assert len(reports.queries) == 2
        await runner.get(("7d", "", "", ""), query)  # finished: computed again
        assert len(reports.queries) == 3
    finally:
        runner.close()


async def raw_exchange(port: int, request: bytes, *, wait: float = 10.0) -> bytes:
    """Send ``request`` bytes on a fresh connection; everything the server sends until it
    closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", b"Basic \xc3\x28\xa0", b"\xff"])
async def test_non_utf8_authorization_is_401_without_a_traceback(value: bytes) -> None:
    """Bytes that are not UTF-8 in Authorization get 401 like any wrong credential, and
    nothing is logged as an error."""
    app = build_app(exposition=FakeExposition(), reports=FakeReports(),
                    readiness=lambda: Readiness(True, {}),
                    auth=AuthPolicy(bearer_token="t0ken", basic_user="ops",
                                    basic_password="pw"), clock=FakeClock(NOW))
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        with capture_logs() as logs:
            answer = await raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                                        b"Authorization: " + value + b"\r\n"
                                        b"Connection: close\r\n\r\n")
    finally:
        await runner.cleanup()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]
    assert not [e for e in logs if e["log_level"] in {"error", "critical"}]


async def test_a_half_sent_request_is_closed_within_the_header_timeout() -> None:
    """A client that sends half a request line and stops is disconnected by the server
    within the header timeout (no bytes answered); a whole request still gets its answer."""
    app = build_app(exposition=FakeExposition(), reports=FakeReports(),
                    readiness=lambda: Readiness(True, {}), auth=AuthPolicy(),
                    clock=FakeClock(NOW))
    runner = make_runner(app, header_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    loop = asyncio.get_running_loop()
    try:
        port = runner.addresses[0][1]
        started = loop.time()
        answer = await raw_exchange(port, b"GET /metr", wait=5.0)
        elapsed = loop.time() - started
        whole = await raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                   b"Connection: close\r\n\r\n")
    finally:
        await runner.cleanup()
    assert answer == b""  # closed by the server, not answered
    assert 0.4 <= elapsed < 3.0, elapsed
    assert whole.startswith(b"HTTP/1.1 200 ")


# -- the report bound, cancellation, and /metrics beside busy reports -----------------------


class GatedReports(FakeReports):
    """Reports that block until ``gate`` is set or they are cancelled; ``entered`` is set
    as each starts, ``cancelled`` as one sees its cancel."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.cancelled = threading.Event()

    def report(self, query: ReportQuery, cancel: Cancel) -> Mapping[str, Any]:
        self.entered.set()
        while not self.gate.is_set():
            if cancel.wait(0.01):
                self.cancelled.set()
                raise StoreError("interrupted")
        return super().report(query, cancel)


async def event_set(event: threading.Event) -> bool:
    """Wait for a thread's ``event`` without blocking the loop or using its default
    executor (a thread of its own; False after 30 s, a bound for failure only)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()

    def watch() -> None:
        loop.call_soon_threadsafe(done.set_result, event.wait(30))

    threading.Thread(target=watch, daemon=True).start()
    return await done


async def gated_client(reports: GatedReports, *, slots: int,
                       exposition: Any = None) -> TestClient[Any, Any]:
    """A test client (handler cancellation on, as in serve) over ``reports``."""
    app = build_app(exposition=exposition or FakeExposition(), reports=reports,
                    readiness=lambda: Readiness(True), auth=AuthPolicy(), clock=FakeClock(NOW),
                    report_concurrency=slots)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_a_report_beyond_the_bound_is_503_with_retry_after() -> None:
    """With every report slot busy, a distinct report is refused at once with 503
    REPORTS_BUSY, a Retry-After and a JSON error body; an identical one shares the running
    computation; once the slot is free, the refused one is answered."""
    reports = GatedReports()
    client = await gated_client(reports, slots=1)
    try:
        first = asyncio.ensure_future(client.get("/report", params={"since": "7d"}))
        assert await event_set(reports.entered)
        same = asyncio.ensure_future(client.get("/report", params={"since": "7d"}))
        refused = await client.get("/report", params={"since": "8d"})
        assert refused.status == 503
        assert int(refused.headers["Retry-After"]) >= 1
        error = (await refused.json())["error"]
        assert error["code"] == "REPORTS_BUSY"
        assert "report_concurrency" in error["message"]
        reports.gate.set()
        assert (await first).status == 200
        assert (await same).status == 200
        assert len(reports.queries) == 1  # the identical request shared the computation
        again = await client.get("/report", params={"since": "8d"})
        assert again.status == 200
    finally:
        reports.gate.set()
        await client.close()


async def test_a_report_whose_client_left_is_cancelled_and_frees_its_slot() -> None:
    """When the only client waiting for a report hangs up, the computation is cancelled
    (its source sees the cancel) and its slot serves the next distinct report."""
    reports = GatedReports()
    client = await gated_client(reports, slots=1)
    try:
        async with aiohttp.ClientSession() as session:
            leaving = asyncio.ensure_future(
                session.get(client.make_url("/report"), params={"since": "7d"}))
            assert await event_set(reports.entered)
            leaving.cancel()  # the client hangs up
            with pytest.raises(asyncio.CancelledError):
                await leaving
        assert await event_set(reports.cancelled)
        reports.gate.set()
        answered = await client.get("/report", params={"since": "8d"})
        assert answered.status == 200
        assert len(reports.queries) == 1  # the cancelled one never finished
    finally:
        reports.gate.set()
        await client.close()


class LoopOnlyExposition(FakeExposition):
    """Cached bytes; rendering in a worker thread blocks until ``released``."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def render(self, accept: str) -> tuple[bytes, str]:
        self.released.wait(30)
        raise AssertionError("rendered in a worker thread")


async def test_metrics_answer_while_every_report_slot_and_worker_thread_is_busy() -> None:
    """/metrics answers (gzip too) while every report slot is busy and the loop's default
    executor is blocked: scrapes need neither."""
    loop = asyncio.get_running_loop()
    default = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(default)
    blocked = threading.Event()
    reports = GatedReports()
    exposition = LoopOnlyExposition()
    client = await gated_client(reports, slots=1, exposition=exposition)
    try:
        busy = loop.run_in_executor(None, blocked.wait, 30)  # the only default worker
        report = asyncio.ensure_future(client.get("/report", params={"since": "7d"}))
        assert await event_set(reports.entered)
        bound = aiohttp.ClientTimeout(total=30)  # a bound for failure only
        scrape = await client.get("/metrics", timeout=bound)
        assert scrape.status == 200
        assert await scrape.read() == b"nexus_up 1\n"
        zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"},
                                  auto_decompress=False, timeout=bound)
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert gzip_decompress(await zipped.read()) == b"nexus_up 1\n"
        assert not report.done()
    finally:
        reports.gate.set()
        blocked.set()
        exposition.released.set()
        await busy
        await report
        await client.close()
