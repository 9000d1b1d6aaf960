"""Benchmark the HTML report over a year of history (not a test).

Builds the report with its daily series (``build_report(..., series=True)``) over the
database ``bench/history.py --db FILE`` leaves, renders it to HTML, and prints the time
of each step and the page's size against the goals (render < 2 s, page < 5 MB).

    .venv/bin/python bench/history.py --db /tmp/year.duckdb   # once: a year of history
    .venv/bin/python bench/html_report.py /tmp/year.duckdb [--days 365] [--out report.html]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from nexus_audit.audit.report import build_report
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import Window
from nexus_audit.history.store import Store
from nexus_audit.output.html_report import render_html

GOAL_SECONDS = 2.0
GOAL_BYTES = 5_000_000


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path, help="a database bench/history.py made (--db)")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--out", type=Path, help="also write the page here")
    parser.add_argument("--chromium", type=Path, metavar="PATH",
                        help="also open the page in this headless Chromium (e.g. "
                             "/usr/bin/chromium) and print its first contentful paint")
    args = parser.parse_args(argv)
    store = Store(args.db)
    with store.read() as con:
        row = con.execute("SELECT max(finished_at) FROM crawls").fetchone()
    if not row or row[0] is None:
        parser.error(f"{args.db}: no crawls")
    end = row[0] + timedelta(seconds=1)
    window = Window(end - timedelta(days=args.days), end)
    pricing = load_pricing()
    timings: dict[str, list[float]] = {"report": [], "series": [], "html": [], "html_cpu": []}
    page = ""
    for _ in range(3):
        t0 = time.perf_counter()
        build_report(store, window, stale_after=timedelta(days=7),
                     pending_stale_after=timedelta(hours=1),
                     max_gap_instances=timedelta(hours=2),
                     max_gap_buckets=timedelta(hours=2), pricing=pricing, now=end)
        t1 = time.perf_counter()
        report = build_report(store, window, stale_after=timedelta(days=7),
                              pending_stale_after=timedelta(hours=1),
                              max_gap_instances=timedelta(hours=2),
                              max_gap_buckets=timedelta(hours=2), pricing=pricing, now=end,
                              series=True)
        t2, c2 = time.perf_counter(), time.process_time()
        page = render_html(report)
        t3, c3 = time.perf_counter(), time.process_time()
        # CPU time too: rendering is one Python thread, so on a machine busy with other
        # work its CPU time is what it would take alone.
        timings["html_cpu"].append(c3 - c2)
        timings["report"].append(t1 - t0)
        timings["series"].append(t2 - t1)
        timings["html"].append(t3 - t2)
    size = len(page.encode("utf-8"))
    best = {k: min(v) for k, v in timings.items()}
    total = best["series"] + best["html"]
    print(f"{args.days} days: {len(report.drift):,} drift rows, {len(report.exposures):,} "
          f"exposures, {len(report.series.cost) if report.series else 0} days")
    print(f"build_report: {best['report'] * 1000:.0f} ms without the series, "
          f"{best['series'] * 1000:.0f} ms with them (best of 3)")
    print(f"rendering the HTML: {best['html'] * 1000:.0f} ms "
          f"({best['html_cpu'] * 1000:.0f} ms of CPU) "
          f"({best['html'] / GOAL_SECONDS:.2f}x the {GOAL_SECONDS:.0f} s goal); report with "
          f"series and HTML together: {total:.2f} s ({total / GOAL_SECONDS:.2f}x)")
    print(f"page: {size / 1e6:.2f} MB ({size / GOAL_BYTES:.2f}x the 5 MB goal)")
    if args.out:
        args.out.write_text(page, encoding="utf-8")
    if args.chromium:
        print(f"first contentful paint in Chromium: {first_paint(args.chromium, page):.0f} ms "
              "(goal < 2000 ms)")
    return 0


def first_paint(chromium: Path, page: str) -> float:
    """Milliseconds to the page's first contentful paint in headless Chromium."""
    # Imported here: a test dependency, needed only with --chromium.
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        path = Path(tmp) / "report.html"
        path.write_text(page, encoding="utf-8")
        browser = playwright.chromium.launch(executable_path=str(chromium), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"])
        tab = browser.new_page(viewport={"width": 1200, "height": 900})
        tab.goto(path.as_uri())
        paint = float(tab.evaluate("""() => new Promise(done => new PerformanceObserver(
            (list, obs) => { const e = list.getEntries()
                .find(e => e.name === 'first-contentful-paint');
              if (e) { obs.disconnect(); done(e.startTime); } })
            .observe({type: 'paint', buffered: true}))"""))
        browser.close()
        return paint


if __name__ == "__main__":
    sys.exit(main())
