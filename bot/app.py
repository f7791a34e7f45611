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
from channels.slack.runtime import SlackRuntime, build_slack_runtime, missing_settings
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


class SlackNotConfigured(Exception):
    """Slack credentials are missing; the message names them and where to get them."""


def build_web_app(
    core: Core, scheduler: AsyncIOScheduler, slack: SlackRuntime | None = None
) -> web.Application:
    """The HTTP surface: Slack's endpoint, liveness and readiness."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        checks = {"database": True, "scheduler": scheduler.running}
        try:
            await core.store.ping()
        except Exception as exc:
            logger.warning("readyz.database_unavailable", error=type(exc).__name__)
            checks["database"] = False
        if slack is not None:
            checks["slack"] = await slack.auth_ok()
        status = 200 if all(checks.values()) else 503
        return web.json_response({"ready": status == 200, "checks": checks}, status=status)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if slack is not None:
        app.router.add_routes(slack.routes())
    return app


def check_slack_settings(settings: Settings, socket_mode: bool) -> None:
    """Raises SlackNotConfigured naming every missing variable for this mode."""
    missing = missing_settings(settings, socket_mode)
    if missing:
        raise SlackNotConfigured(
            f"{', '.join(missing)} not set: create the Slack app from manifest.yml and set them "
            "(README, 'Create the Slack app')."
        )


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    socket_mode: bool = False,
    clock: Clock = utc_now,
) -> None:
    """Migrates the database, then runs Slack, the scheduler and the web server until stopped."""
    check_slack_settings(settings, socket_mode)
    stop = stop or _stop_on_signals()
    async with open_core(settings, clock) as core:
        await upgrade(core.engine)
        slack = build_slack_runtime(
            settings, core.store, core.board, core.registry, clock, socket_mode
        )
        scheduler = build_scheduler(
            slack.reconciler, settings.reconcile_interval, slack.gateway.forget_old_deliveries
        )
        runner = web.AppRunner(build_web_app(core, scheduler, slack), access_log=None)
        try:
            scheduler.start()
            await runner.setup()
            await web.TCPSite(runner, settings.host, settings.port).start()
            await slack.start()
            logger.info(
                "serve.started", host=settings.host, port=settings.port, socket_mode=socket_mode
            )
            await stop.wait()
        finally:
            await slack.close()
            await runner.cleanup()
            if scheduler.running:
                scheduler.shutdown(wait=False)
            logger.info("serve.stopped")


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for a clean shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
