"""The root's HTTP surface: one server for health, metrics, Slack's events and the MCP
endpoint (or the MCP endpoint on a port of its own)."""

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import timedelta

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from starlette.types import ASGIApp

from bot.gauges import GaugeQueries
from bot.root.core import Core
from bot.root.slack import Slack
from bot.runtime.runner import AgentRunner
from bot.settings import Settings
from bot.signal import ChangeSignal
from channels.health import Check, database_check, health_routes
from channels.mcp.asgi import AsgiMount
from channels.mcp.server import MCP_PATH, McpHttpServer
from channels.metrics import PrometheusMetrics, metrics_routes
from channels.slack.adapter_http import slack_routes
from store.gauges import SqlGauges

#: At shutdown, how long requests in flight may take once the server stops listening; a stream
#: still open then (an MCP client's event stream) is ended.
SHUTDOWN_GRACE_SECONDS = 5.0


async def start_mcp(
    stack: AsyncExitStack, settings: Settings, mcp_app: ASGIApp, mount: AsgiMount | None
) -> str | None:
    """Starts the MCP app: mounted on the main server, or on its own port (returns its URL)."""
    if mount is not None:
        await mount.start()
        stack.push_async_callback(mount.close)
        return None
    if not settings.mcp_port:
        return None
    separate = McpHttpServer(mcp_app, settings.host, settings.mcp_port)
    await separate.start()
    stack.push_async_callback(separate.close)
    return f"http://{settings.host}:{separate.port}{MCP_PATH}"


def http_app(
    core: Core,
    scheduler: AsyncIOScheduler,
    slack: Slack | None,
    mount: AsgiMount | None,
    scrape: list[web.RouteDef],
) -> web.Application:
    """One HTTP surface: health, metrics, Slack's events and the MCP endpoint."""
    app = web.Application()
    app.on_shutdown.append(_end_long_polls(core.signal))
    app.add_routes(health_routes(_readiness(core, scheduler, slack)))
    app.add_routes(scrape)
    if slack is not None:
        app.add_routes(slack_routes(slack.gateway))
    if mount is not None:
        app.add_routes(mount.routes())
    return app


def scrape_routes(
    core: Core, metrics: PrometheusMetrics, runner: AgentRunner
) -> list[web.RouteDef]:
    """``GET /metrics``: this process's counters, the shared database's gauges read at each
    scrape, and the built-in agent runs in flight here."""
    settings = core.settings
    gauges = GaugeQueries(
        SqlGauges(core.engine),
        core.clock,
        settings.lease_policy,
        timedelta(seconds=settings.worker_timeout),
    )
    return metrics_routes(metrics, gauges.read_gauges, lambda: len(runner.active))


async def start_http(stack: AsyncExitStack, app: web.Application, host: str, port: int) -> str:
    """Serves ``app``; returns its base URL (with the port bound, when ``port`` is 0)."""
    http = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await http.setup()
    stack.push_async_callback(http.cleanup)  # no more requests: what was acked finishes next
    site = web.TCPSite(http, host, port)
    await site.start()
    return f"http://{host}:{_bound_port(site)}"


def _end_long_polls(signal: ChangeSignal) -> Callable[[web.Application], Awaitable[None]]:
    """Once the server stops listening, agents' ``wait_for_work`` calls answer "nothing came"
    at once, so the wait for requests in flight does not wait on them."""

    async def on_shutdown(_app: web.Application) -> None:
        signal.close()

    return on_shutdown


def _readiness(core: Core, scheduler: AsyncIOScheduler, slack: Slack | None) -> dict[str, Check]:
    async def scheduler_running() -> bool:
        return bool(scheduler.running)

    checks: dict[str, Check] = {
        "database": database_check(core.store),
        "scheduler": scheduler_running,
    }
    if slack is not None:
        checks["slack"] = slack.auth
    return checks


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the listening server here once started
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0
