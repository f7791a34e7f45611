"""The composition root: builds the engine, store, use cases, scheduler and web server.

Only this module reads real time and wires concrete adapters; whoever creates a resource here
closes it, in reverse order.
"""

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.board import Board
from bot.clock import Clock, utc_now
from bot.reconcile import Reconciler
from bot.registry import AgentRegistry
from bot.secrets import SecretBox
from bot.settings import Settings
from scheduler.jobs import build_scheduler
from store.database import create_engine
from store.migrate import upgrade
from store.repository import SqlStore

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Core:
    """The use cases over one store, ready to call."""

    settings: Settings
    engine: AsyncEngine
    store: SqlStore
    board: Board
    reconciler: Reconciler
    registry: AgentRegistry


@asynccontextmanager
async def open_core(settings: Settings, clock: Clock = utc_now) -> AsyncIterator[Core]:
    """Opens the database and builds the use cases; disposes of the engine on exit."""
    engine = create_engine(settings.database_url)
    try:
        store = SqlStore(engine)
        secret_key = settings.secret_key.get_secret_value() if settings.secret_key else ""
        secrets = SecretBox(secret_key) if secret_key else None
        yield Core(
            settings=settings,
            engine=engine,
            store=store,
            board=Board(store, clock, settings.lease_policy),
            reconciler=Reconciler(store, clock, settings.lease_policy),
            registry=AgentRegistry(store, clock, secrets),
        )
    finally:
        await engine.dispose()


def build_web_app(core: Core, scheduler: AsyncIOScheduler) -> web.Application:
    """The HTTP surface: liveness and readiness probes."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        checks = {"database": True, "scheduler": scheduler.running}
        try:
            await core.store.ping()
        except Exception as exc:
            logger.warning("readyz.database_unavailable", error=type(exc).__name__)
            checks["database"] = False
        status = 200 if all(checks.values()) else 503
        return web.json_response({"ready": status == 200, "checks": checks}, status=status)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Migrates the database, starts the scheduler and the web server, and runs until stopped."""
    stop = stop or _stop_on_signals()
    async with open_core(settings) as core:
        await upgrade(core.engine)
        scheduler = build_scheduler(core.reconciler, settings.reconcile_interval)
        scheduler.start()
        runner = web.AppRunner(build_web_app(core, scheduler), access_log=None)
        try:
            await runner.setup()
            await web.TCPSite(runner, settings.host, settings.port).start()
            logger.info("serve.started", host=settings.host, port=settings.port)
            await stop.wait()
        finally:
            await runner.cleanup()
            scheduler.shutdown(wait=False)
            logger.info("serve.stopped")


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for a clean shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
