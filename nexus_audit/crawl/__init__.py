"""One crawl of one account (the crawler) and its live progress display.

Reads CloudNexus through :mod:`nexus_audit.api` and hands records to a sink (the history's
staged crawl); it knows nothing of DuckDB.
"""

from nexus_audit.crawl.crawler import CrawlSink, CrawlStore, crawl_account, crawl_and_commit

__all__ = ["CrawlSink", "CrawlStore", "crawl_account", "crawl_and_commit"]
