"""``nexus-audit serve``: flags and settings in, :class:`~nexus_audit.service.runtime.Service`
run until SIGTERM or SIGINT. The runtime itself lives in :mod:`nexus_audit.service`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from dataclasses import replace
from typing import Final

from nexus_audit.config import Settings
from nexus_audit.domain.policy import load_configured
from nexus_audit.domain.pricing import load_pricing
from nexus_audit.domain.timeutil import SystemClock, parse_duration
from nexus_audit.domain.values import validate_listen
from nexus_audit.history.duckfile import process_files
from nexus_audit.history.store import Store
from nexus_audit.service.runtime import Service
from nexus_audit.service.web import make_ssl_context
from nexus_audit.service.workers import ReportWorkers

#: How soon a thread waiting for the GIL gets it, in seconds (CPython's default: 0.005).
#: The event loop serves /metrics and parses pages while worker threads commit and
#: rebuild in Python; at every system call (a socket read or write, the selector) the
#: loop gives up the GIL and then waited up to 5 ms per busy thread to get it back, so a
#: scrape waited tens of milliseconds behind a rebuild.
SWITCH_INTERVAL: Final = 0.001
#: The cyclic garbage collector's thresholds (CPython's default: 700, 10, 10). Parsing a
#: hundred accounts' pages allocates ~2 million containers a round, nearly all freed by
#: reference counting; at the default a full collection ran every few seconds, each
#: stopping every thread (the loop included) for up to half a second on this host.
GC_THRESHOLDS: Final = (20_000, 20, 20)


def tune_interpreter() -> None:
    """Set the interpreter for a long-running ``serve``: :data:`SWITCH_INTERVAL`,
    :data:`GC_THRESHOLDS`, and what exists once started (modules, settings, the service)
    moved out of the collector's way for good (``gc.freeze``)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


def apply_flags(args: argparse.Namespace, settings: Settings) -> Settings:
    """Settings with ``--listen``, ``--interval``, ``--bucket-interval`` and ``--shard``
    applied (only the shard's accounts are kept)."""
    web_config = settings.web
    if getattr(args, "listen", None):
        validate_listen(args.listen, "--listen")
        web_config = replace(web_config, listen=args.listen)
    interval = settings.interval
    if getattr(args, "interval", None):
        interval = parse_duration(args.interval, parameter="--interval")
    bucket_interval = settings.bucket_interval
    if getattr(args, "bucket_interval", None):
        bucket_interval = parse_duration(args.bucket_interval, parameter="--bucket-interval")
    return replace(settings, web=web_config, interval=interval,
                   bucket_interval=bucket_interval).in_shard(getattr(args, "shard", None))


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``nexus-audit serve``; the exit code."""
    settings = apply_flags(args, settings)
    settings.crawled_accounts(None)  # refuses a configuration without any account
    ssl_context = None
    if settings.web.tls_cert_file is not None and settings.web.tls_key_file is not None:
        ssl_context = make_ssl_context(settings.web.tls_cert_file, settings.web.tls_key_file)
    pricing = load_pricing(settings.pricing_file)
    policy = load_configured(settings.policy_file)
    # The process's one DuckFiles: the store, its copies for reports and the snapshot
    # rebuilds all reach the file through it (see nexus_audit.history.duckfile).
    store = Store(settings.db_path, files=process_files())
    store.migrate()
    # APScheduler logs through the standard library in plain text; our JSON log lines
    # cover what matters (crawl.skipped, crawl.crashed), so keep its chatter out.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    service = Service(settings, store, pricing, clock=SystemClock(),
                      grace=settings.shutdown_grace.total_seconds(),
                      policy=policy, workers=ReportWorkers())
    tune_interpreter()
    return asyncio.run(service.run(ssl_context))
