"""The composition root: builds the engine, store, use cases, scheduler and web server.

Only this module reads real time and wires concrete adapters; whoever creates a resource here
closes it, in reverse order.
"""

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.clock import Clock, utc_now
from bot.core import Core, open_core
from bot.errors import ConfigurationError
from bot.runtime.models import ModelFactory
from bot.runtime.runner import AgentRunner, RunnerSettings, ThreadStatus
from bot.settings import Settings
from bot.signal import Queued
from bot.supervisor import Supervisor
from bot.tools import TaskTools, build_tool_server, make_caller_factory
from channels.mcp.server import McpHttpServer, build_mcp_app, build_mcp_server
from channels.slack.runtime import SlackRuntime, build_slack_runtime, missing_settings
from scheduler.jobs import build_scheduler
from store.migrate import upgrade

logger = structlog.get_logger(__name__)


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


@dataclass
class AgentServices:
    """The built-in runtime and the MCP front door, started and closed together."""

    runner: AgentRunner
    models: ModelFactory
    mcp: McpHttpServer | None

    async def start(self, supervisor: Supervisor) -> None:
        supervisor.spawn(self.runner.run(), name="agent-runner")
        if self.mcp is not None:
            await self.mcp.start()

    async def close(self) -> None:
        if self.mcp is not None:
            await self.mcp.close()
        await self.runner.close()
        await self.models.close()


def build_agent_services(
    core: Core,
    supervisor: Supervisor,
    thread_status: ThreadStatus | None,
    worker: str,
    settings: Settings | None = None,
) -> AgentServices:
    """Wires the runtime's model clients, the runner and the MCP server around the core."""
    settings = settings or core.settings
    fallback = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
    models = ModelFactory(core.registry, fallback, settings.anthropic_base_url)
    runtime_server = build_tool_server(_in_process_only)
    runner = AgentRunner(
        core.store,
        core.work,
        core.registry,
        runtime_server,
        tools_for(core),
        models,
        core.clock,
        supervisor,
        worker,
        RunnerSettings(max_steps=settings.agent_max_steps),
        thread_status,
    )
    core.signal.subscribe(runner.wake, to=Queued.WAKEUPS)
    mcp = None
    if settings.mcp_port:
        server = build_mcp_server(core.registry, tools_for(core))
        app = build_mcp_app(server, core.registry, settings.host)
        mcp = McpHttpServer(app, settings.host, settings.mcp_port)
    return AgentServices(runner, models, mcp)


def tools_for(core: Core) -> Callable[[str, int | None], TaskTools]:
    """The tool set as an agent sees it (pinned to an epoch for a built-in run)."""
    return make_caller_factory(core.store, core.board, core.work, core.clock, core.signal)


async def _in_process_only(_headers: object) -> TaskTools:
    """The runtime always pins its caller; a call without one is a bug."""
    raise ConfigurationError("the built-in runtime called a tool without pinning its agent")


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    socket_mode: bool = False,
    clock: Clock = utc_now,
) -> None:
    """Migrates the database, then runs Slack, agents, the scheduler and the web server."""
    check_slack_settings(settings, socket_mode)
    stop = stop or _stop_on_signals()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    async with open_core(settings, clock) as core:
        await upgrade(core.engine)
        slack = build_slack_runtime(
            settings,
            core.store,
            core.board,
            core.registry,
            clock,
            socket_mode,
            core.signal,
        )
        agents = build_agent_services(core, slack.services.supervisor, slack.thread_status, worker)
        loops = slack.loops
        scheduler = build_scheduler(
            slack.reconciler, settings.reconcile_interval, slack.gateway.prune_inbound_event_ids
        )
        runner = web.AppRunner(build_web_app(core, scheduler, slack), access_log=None)
        try:
            scheduler.start()
            await runner.setup()
            await web.TCPSite(runner, settings.host, settings.port).start()
            await slack.start()
            await agents.start(loops)
            logger.info(
                "serve.started",
                host=settings.host,
                port=settings.port,
                mcp_port=settings.mcp_port,
                socket_mode=socket_mode,
            )
            await stop.wait()
        finally:
            await agents.close()
            await runner.cleanup()  # no more requests: what was acked is finished next
            await slack.close()
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
