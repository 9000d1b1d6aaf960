"""Running the simulator: in-process on the current loop, or in a thread of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from types import TracebackType

from aiohttp import web

from .app import API_PREFIX, build_app
from .auth import key_id
from .clock import Clock
from .config import SimulatorConfig
from .faults import FaultInjector
from .fleet import ChurnEvent, Fleet, Instance
from .multipart import MultipartUploads
from .objects import ObjectStore
from .requestlog import RequestLog
from .state import SimState

log = logging.getLogger(__name__)

# On stop, requests in flight get this long to finish (aiohttp's default is 60 s), so a
# stop while busy, or while a SLOW fault sleeps, is prompt.
SHUTDOWN_TIMEOUT = 1.0


class Simulator:
    """One simulator: its state, its HTTP server, and helpers for tests."""

    def __init__(self, config: SimulatorConfig | None = None, *, clock: Clock | None = None):
        self.config = config or SimulatorConfig()
        self.state = SimState(self.config, clock)
        self._runner: web.AppRunner | None = None
        self._churn_task: asyncio.Task[None] | None = None
        self.host = self.config.host
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve; with port 0 the real port is read back from the socket."""
        runner = web.AppRunner(
            build_app(self.state),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self.host, self.port = str(address[0]), int(address[1])
        if self.config.churn_interval > 0:
            self._churn_task = asyncio.create_task(self._churn_loop(self.config.churn_interval))

    async def stop(self) -> None:
        """Stop churning and serving; safe to call twice."""
        if self._churn_task is not None:
            self._churn_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._churn_task
            self._churn_task = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _churn_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for account in self.state.accounts:  # every account's fleet churns
                events = account.fleet.churn_step()
                log.debug("simulator churn: %d changes", len(events))

    # -- what tests use ----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` (no path); the admin routes live under it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The API base URL, ``http://127.0.0.1:PORT/v2``."""
        return self.base_url + API_PREFIX

    @property
    def key(self) -> str:
        """The primary API key."""
        return self.config.key

    @property
    def keys(self) -> tuple[str, ...]:
        """Every configured key (revoked ones included)."""
        return self.config.api_keys

    @property
    def auth_headers(self) -> Mapping[str, str]:
        """``{"Authorization": "Bearer <primary key>"}``."""
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def clock(self) -> Clock:
        """The clock the simulator reads."""
        return self.state.clock

    @property
    def fleet(self) -> Fleet:
        """The live fleet."""
        return self.state.fleet

    @property
    def faults(self) -> FaultInjector:
        """Fault injection: ``sim.faults.script(kind, path=..., times=..., after=...)``."""
        return self.state.faults

    @property
    def request_log(self) -> RequestLog:
        """Every API request received (admin routes excluded)."""
        return self.state.request_log

    @property
    def objects(self) -> ObjectStore:
        """Objects stored through PUT."""
        return self.state.objects

    @property
    def uploads(self) -> MultipartUploads:
        """Multipart uploads in progress."""
        return self.state.uploads

    def fleet_of(self, key: str) -> Fleet:
        """The fleet ``key`` sees: its account's (``KeyError`` for an unknown key)."""
        return self.state.account(key_id(key)).fleet

    def key_id(self, key: str | None = None) -> str:
        """The loggable id of ``key`` (default: the primary key)."""
        return key_id(key or self.key)

    def churn_step(self) -> list[ChurnEvent]:
        """One seeded churn step."""
        return self.fleet.churn_step()

    def set_bucket_access(self, bucket_id: str, access: str) -> None:
        """Set a bucket's access; ``KeyError`` if there is none."""
        self.fleet.set_bucket_access(bucket_id, access)

    def delete_instance(self, instance_id: str) -> Instance:
        """Delete an instance; ``KeyError`` if there is none."""
        return self.fleet.delete_instance(instance_id)

    def add_instance(
        self,
        *,
        name: str,
        plan: str | None = "micro",
        region: str = "us-east-1",
        status: str = "running",
        tags: Mapping[str, str] | None = None,
        instance_id: str | None = None,
        cpu: int | None = None,
        memory_gb: int | None = None,
    ) -> Instance:
        """Add an instance directly (running by default)."""
        return self.fleet.add_instance(
            name=name,
            plan=plan,
            region=region,
            status=status,
            tags=tags,
            instance_id=instance_id,
            cpu=cpu,
            memory_gb=memory_gb,
        )

    def revoke_key(self, key: str | None = None) -> None:
        """Reject ``key`` (default: the primary key) with 401 from now on."""
        self.state.keys.revoke(key or self.key)

    def add_key(self, key: str, *, account: int = 0) -> str:
        """Accept another key of the ``account``-th account at runtime; return its id."""
        return self.state.keys.add(key, account=account)


@contextlib.asynccontextmanager
async def start_simulator(
    config: SimulatorConfig | None = None, *, clock: Clock | None = None
) -> AsyncIterator[Simulator]:
    """``async with start_simulator(SimulatorConfig(...)) as sim:`` serve on 127.0.0.1."""
    sim = Simulator(config, clock=clock)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


class SimulatorThread(Simulator):
    """A simulator serving from its own event loop in a daemon thread.

    Use as a context manager from synchronous code; the test helpers of Simulator work
    from any thread (the state is locked).
    """

    def __init__(self, config: SimulatorConfig | None = None, *, clock: Clock | None = None):
        super().__init__(config, clock=clock)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> SimulatorThread:
        self.start_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_thread()

    def start_thread(self, timeout: float = 10.0) -> None:
        """Start serving; returns once the port is bound (raises if binding failed)."""
        self._thread = threading.Thread(target=self._main, name="cloudnexus-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("simulator thread did not start")
        if self._error is not None:
            raise self._error

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.start()
        except BaseException as exc:  # handed to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()
