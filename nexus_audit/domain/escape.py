"""Escape untrusted text for the reader of each output: a terminal, Markdown, CSV, JSON.

Every value from the API (ids, names, tags, access values, error bodies) is untrusted
text. What each reader would interpret is made inert, and visible:

- **Terminal** (the report table, error and summary lines on standard error, log lines on
  a terminal): every character Python does not call printable but the ASCII space is
  shown as a Python-style escape (``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\u200b``),
  as ``repr`` would: control characters (C0, DEL and C1: ESC, so no CSI or OSC sequence,
  and CR, LF, tab), line and paragraph separators, format characters (zero-width, bidi
  overrides, BOM), other spaces (a no-break space next to ``private``), private-use and
  unassigned code points. A backslash is left as it is, so our own
  messages stay readable; a value that spells ``\\x1b`` literally reads the same as one
  holding ESC, which is enough to see that it is odd.
- **Markdown** (``report --format markdown``): the terminal escapes first (no cell breaks
  a row or starts a heading), then ``\\``, ``|``, backticks, ``*``, ``[`` and ``]`` get a
  backslash and ``<``, ``>``, ``&`` become entities, so no raw HTML (``<img onerror>``,
  ``<script>``), link, image or code span comes through.
- **CSV** (``report --format csv``): a text cell beginning with ``=``, ``+``, ``-``, ``@``,
  tab or CR gets a leading ``'`` (OWASP's CSV injection advice), so a spreadsheet shows
  it as text, not a formula; numbers stay numbers (``-3.5`` is not text). The csv module
  quotes separators, quotes and line breaks.
- **JSON** (the report JSON and OCSF JSON lines): the encoder escapes C0 controls; C1
  controls and U+2028/U+2029 (line breaks to some line-based readers) are escaped too,
  as ``\\u0085``-style escapes that every JSON parser reads back as the same text.
"""

from __future__ import annotations

import re
from typing import Final

_SHORT: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF \
        else f"\\U{code:08x}"


def _needs_escape(ch: str) -> bool:
    # str.isprintable is False for the categories Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs.
    return ch != " " and not ch.isprintable()


# Everything printable in ASCII but DEL passes without a category lookup (the common case).
_PLAIN: Final = re.compile(r"[\x20-\x7e]*")


def terminal(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` safe to write to a terminal: no control sequence, no line break (unless
    ``keep_newlines``: LF passes, for multi-line output such as a traceback)."""
    if _PLAIN.fullmatch(text):
        return text
    return "".join(
        ch if not _needs_escape(ch) or (keep_newlines and ch == "\n") else _escape_char(ch)
        for ch in text)


_MARKDOWN: Final = str.maketrans({
    "\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "[": "\\[", "]": "\\]",
    "<": "&lt;", ">": "&gt;", "&": "&amp;",
})


def markdown(text: str) -> str:
    """``text`` as inert Markdown inline text (a table cell, a list item): one line, no
    HTML, no link, no code span, no column break."""
    return terminal(text).translate(_MARKDOWN)


#: The first characters that make a spreadsheet read a cell as a formula (OWASP).
CSV_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell value: a text beginning like a formula gets a leading ``'``; anything
    else (numbers included, negative ones too) as it is."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_STARTS):
        return "'" + value
    return value


_JSON_EXTRA: Final = re.compile("[\x7f-\x9f\u2028\u2029]")


def json_text(encoded: str) -> str:
    """JSON text (from ``json.dumps``/``iterencode``) with DEL, C1 controls, U+2028 and
    U+2029 written as ``\\u2028``-style escapes: the same JSON value, safe for line-based and
    terminal readers. Outside strings JSON is ASCII, so replacing anywhere is exact."""
    if encoded.isascii() and "\x7f" not in encoded:  # nothing to replace: no regex pass
        return encoded
    return _JSON_EXTRA.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)
