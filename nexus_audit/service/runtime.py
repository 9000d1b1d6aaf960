"""The ``serve`` runtime: scheduled crawls plus /metrics, /report, /healthz and /readyz.

One store, one price list, one HTTP session, one rate budget per key (shared by that key's
instance and bucket jobs), one ``ApiStats`` per account for the process's life; the web
app and the scheduler on one event loop. The ``serve`` command only parses flags and
calls :meth:`Service.run`.

Bucket polls run at high priority on their key's budget, which keeps a reserve of each
window for them (sized from the bucket interval and the requests a poll took), so a long
instance crawl never starves them and together they stay within the budget.

After every crawl the metrics snapshot is rebuilt in a worker thread, for the account
and kinds that committed only, and swapped in whole (:mod:`nexus_audit.service.rebuild`:
one part per account, the other accounts' parts and the kinds not crawled reused, values
equal to a full rebuild's). SIGTERM or SIGINT: no new crawls start, a crawl in progress gets a grace
period (``NEXUS_AUDIT_SHUTDOWN_GRACE``, default 10s) to finish and commit, else it is
cancelled and nothing of it is committed; then the web server stops and the exit code is 0.
SIGHUP: the pricing and policy files are read again and the snapshot rebuilt in full with
them; a file that no longer loads keeps the ones in force (and says why in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
from aiohttp import web

from nexus_audit import __version__
from nexus_audit.api import ApiStats, CloudNexusClient
from nexus_audit.api.budget import (
    MIN_POLL_REQUESTS,
    request_priority,
    reserve_for,
    shared_budgets,
)
from nexus_audit.api.client import client_session
from nexus_audit.config import AccountConfig, Settings
from nexus_audit.crawl.crawler import COMMIT_REFUSED, crawl_and_commit
from nexus_audit.domain.model import Kind
from nexus_audit.domain.policy import Policy, load_configured
from nexus_audit.domain.pricing import Pricing, load_pricing
from nexus_audit.domain.timeutil import Clock, format_duration
from nexus_audit.domain.values import validate_listen
from nexus_audit.errors import ConfigError, StoreError
from nexus_audit.history.store import Store
from nexus_audit.logs import get_logger
from nexus_audit.metrics import (
    ApiCollector,
    BuildInfoCollector,
    CrawlStateCollector,
    CrawlStats,
    CrawlStatsCollector,
    Exporter,
    FindingsCollector,
    InventoryCollector,
    SnapshotHolder,
)
from nexus_audit.service.rebuild import SnapshotRebuilds
from nexus_audit.service.reports import StoreReports
from nexus_audit.service.scheduler import (
    CrawlScheduler,
    job_specs,
    judge_readiness,
)
from nexus_audit.service.web import (
    AuthPolicy,
    Readiness,
    build_app,
    make_runner,
)
from nexus_audit.service.workers import ReportWorkers

log = get_logger(__name__)


class Service(SnapshotRebuilds):
    """Everything ``serve`` runs: store, crawls, metrics, the web app, the scheduler.

    ``workers``: compute reports, and the snapshot rebuild's stale-instance read, in
    worker processes (:mod:`nexus_audit.service.workers`), as ``serve`` does; tests mostly
    leave them out to stay in one process.
    """

    def __init__(self, settings: Settings, store: Store, pricing: Pricing, *,
                 clock: Clock, grace: float, policy: Policy | None = None,
                 budget_window: float = 60.0, workers: ReportWorkers | None = None) -> None:
        self.settings = settings
        self.store = store
        self.pricing = pricing
        self.policy = policy
        self.clock = clock
        self.grace = grace
        self.names = tuple(a.name for a in settings.accounts)
        self.intervals: dict[Kind, timedelta] = {"instances": settings.interval,
                                                 "buckets": settings.bucket_interval}
        self.budgets = shared_budgets(settings.accounts, clock, window=budget_window,
                                      max_wait=settings.max_server_wait.total_seconds())
        #: Requests the last bucket poll of each account took (at least the floor).
        self.poll_requests = dict.fromkeys(self.names, MIN_POLL_REQUESTS)
        starved = self.reserve_for_polls()
        if starved:
            # Refuse rather than run a service that never becomes ready.
            raise ConfigError(
                f"the bucket interval ({format_duration(settings.bucket_interval)}) is too "
                f"short for the rate budget of {', '.join(starved)}: bucket polls would "
                "reserve more than half of it and instance crawls could not finish; raise "
                "NEXUS_RATE_BUDGET or --bucket-interval", parameter="bucket-interval")
        self.api_stats = {name: ApiStats() for name in self.names}
        self.crawl_stats = CrawlStats(self.names)
        self.holder = SnapshotHolder()
        self.exporter = Exporter(
            self.holder,
            snapshot_collectors=[InventoryCollector(self.holder),
                                 CrawlStateCollector(self.holder),
                                 FindingsCollector(self.holder)],
            counted_collectors=[CrawlStatsCollector(self.crawl_stats)],
            live_collectors=[ApiCollector(self.api_stats, self.budgets),
                             BuildInfoCollector(__version__)],
        )
        #: Worker processes for reports (``serve`` only).
        self.workers = workers
        #: The rebuild's own worker, at serve's priority: metrics wait for it, and report
        #: workers (niced) must not slow it down.
        self.rebuild_worker = ReportWorkers(niceness=0) if workers is not None else None
        self.reports = StoreReports(store, settings, pricing, clock, policy, workers=workers)
        self._init_rebuilds()
        self._session: aiohttp.ClientSession | None = None
        self.scheduler = CrawlScheduler(job_specs(settings.accounts, self.intervals), self.crawl)

    # -- metrics snapshot ------------------------------------------------------------------

    def reserve_for_polls(self) -> list[str]:
        """Reserve on each budget what the bucket polls of its accounts hold per window.

        Returns the accounts whose key's reserve takes more than half the budget: instance
        crawls there are left so little that they may never finish.
        """
        interval = self.settings.bucket_interval.total_seconds()
        reserves: dict[int, int] = {}
        for account in self.settings.accounts:
            budget = self.budgets[account.name]
            reserves[id(budget)] = reserves.get(id(budget), 0) + reserve_for(
                self.poll_requests[account.name], interval, budget.window)
        for budget in self.budgets.values():
            budget.set_reserve(reserves[id(budget)])
        return [name for name, budget in self.budgets.items()
                if reserves[id(budget)] * 2 > budget.capacity]

    def reload(self) -> bool:
        """Read the pricing and policy files again and rebuild the snapshot in full with
        them (blocking; SIGHUP). If either does not load, both in force stay; False."""
        try:
            pricing = load_pricing(self.settings.pricing_file)
            policy = load_configured(self.settings.policy_file)
        except ConfigError as exc:
            log.error("serve.reload_failed", error=str(exc),
                      hint="the pricing and policy in force stay; fix the file and send "
                           "SIGHUP again")
            return False
        with self._rebuild_lock:
            self.pricing, self.policy = pricing, policy
            self.reports.use(pricing, policy)
            # Nothing of the previous snapshot is reused: its findings and costs were
            # judged by what was in force before.
            self._last = None
        self.rebuild_snapshot()
        log.info("serve.reloaded", pricing=pricing.name, pricing_digest=pricing.digest,
                 policy=None if self.settings.policy_file is None
                 else str(self.settings.policy_file))
        return True

    # -- crawls ----------------------------------------------------------------------------

    async def crawl(self, account: AccountConfig, kind: Kind) -> None:
        """One scheduled crawl of one kind: crawl, commit, count, refresh the metrics."""
        assert self._session is not None, "crawls run only while the service runs"
        client = CloudNexusClient(account, self._session, self.budgets[account.name],
                                  stats=self.api_stats[account.name],
                                  timeout=self.settings.request_timeout, clock=self.clock,
                                  max_response_bytes=self.settings.max_response_bytes)
        started = self.clock.monotonic()
        try:
            # Bucket polls are the urgent ones: they use the budget's reserve and go first.
            with request_priority("high" if kind == "buckets" else "normal"):
                summary = await crawl_and_commit(account, self.store, client=client,
                                                 kinds=(kind,), clock=self.clock,
                                                 tolerance=self.settings.total_tolerance)
        except StoreError as exc:
            # The crawl may have been complete, but it is not history and not even recorded
            # as failed: count it as failed, and show it in crawl_success and /readyz until
            # a crawl of this kind is recorded again.
            self.crawl_stats.record(account.name, (kind,), "failed",
                                    self.clock.monotonic() - started)
            log.error("crawl.not_recorded", account=account.name, kinds=[kind], error=str(exc))
            await asyncio.to_thread(self.mark_unrecorded, account.name, kind, str(exc))
            return
        for done in summary.kinds:
            self._unrecorded.pop((account.name, done), None)
        self.crawl_stats.record(account.name, summary.kinds, summary.status, summary.seconds)
        if kind == "buckets" and summary.status == "succeeded":
            # The reserve follows the pages a poll takes (one per 100 buckets or so).
            self.poll_requests[account.name] = max(MIN_POLL_REQUESTS, summary.requests)
            if self.reserve_for_polls():
                log.warning("budget.reserve_high", account=account.name,
                            poll_requests=summary.requests,
                            hint="bucket polls take more than half the rate budget; raise "
                                 "NEXUS_RATE_BUDGET or the bucket interval")
        await self.refresh(kinds=summary.kinds, accounts=(account.name,))

    async def _reload(self) -> None:
        """:meth:`reload` in a worker thread; a store failure keeps the old snapshot."""
        await self.in_thread(self.reload)

    def readiness(self) -> Readiness:
        """/readyz: every account crawled each kind within twice its interval, and the last
        crawl of each kind was committed or at least recorded."""
        snap = self.holder.current
        failures = {key: f"the last {key[1]} crawl could not be recorded: {reason}"
                    for key, reason in snap.unrecorded.items()}
        for key, info in snap.last_crawl.items():
            if key not in failures and info.error_code == COMMIT_REFUSED:
                failures[key] = (f"the last {key[1]} crawl (crawl {info.crawl_id}) was "
                                 f"refused by the store ({COMMIT_REFUSED}); see the "
                                 "crawl.commit_refused log event")
        return judge_readiness(snap.last_success, self.names, self.intervals,
                               self.clock.now(), failures)

    # -- running ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def crawling(self, session: aiohttp.ClientSession, *,
                       scheduled: bool = True) -> AsyncIterator[None]:
        """Scheduled crawls over ``session`` while inside; on exit, in-progress crawls get
        the shutdown grace, then are cancelled. ``scheduled=False``: crawls run only when
        :meth:`crawl` is called (for tests on a fake clock)."""
        self._session = session
        try:
            if scheduled:
                self.scheduler.start()
            yield
        finally:
            await self.scheduler.stop(self.grace)
            self._session = None

    def app(self) -> web.Application:
        """The web application over this service."""
        return build_app(exposition=self.exporter, reports=self.reports,
                         readiness=self.readiness, auth=AuthPolicy.from_web(self.settings.web),
                         clock=self.clock, report_concurrency=self.settings.report_concurrency)

    async def run(self, ssl_context: ssl.SSLContext | None) -> int:
        """Serve until SIGTERM or SIGINT, then shut down cleanly; the exit code."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        received: list[str] = []

        def on_signal(sig: signal.Signals) -> None:
            received.append(sig.name)
            stopping.set()

        reloading: set[asyncio.Task[None]] = set()  # referenced until done

        def on_hangup() -> None:
            task = asyncio.ensure_future(self._reload())
            reloading.add(task)
            task.add_done_callback(reloading.discard)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        host, port = validate_listen(self.settings.web.listen, "listen")
        async with client_session() as session:
            await self.refresh()  # history from earlier runs shows at once
            runner = make_runner(self.app())
            await runner.setup()
            try:
                site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
                try:
                    await site.start()
                except OSError as exc:
                    raise ConfigError(f"listen: cannot listen on {self.settings.web.listen}: "
                                      f"{exc.strerror or exc}") from None
                bound = runner.addresses[0]
                policy = AuthPolicy.from_web(self.settings.web)
                log.info("serve.listening", host=str(bound[0]), port=int(bound[1]),
                         tls=ssl_context is not None,
                         auth=("bearer+basic" if policy.bearer_token and policy.basic_user
                               else "bearer" if policy.bearer_token
                               else "basic" if policy.basic_user else "none"),
                         accounts=list(self.names),
                         interval=self.settings.interval.total_seconds(),
                         bucket_interval=self.settings.bucket_interval.total_seconds())
                async with self.crawling(session):
                    await stopping.wait()
                    log.info("serve.stopping", signal=received[0] if received else None,
                             crawls_in_progress=[s.job_id for s in self.scheduler.running],
                             grace_seconds=self.grace)
            finally:
                await runner.cleanup()
                self.reports.close()
                if self.rebuild_worker is not None:
                    self.rebuild_worker.close()
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
        log.info("serve.stopped")
        return 0

