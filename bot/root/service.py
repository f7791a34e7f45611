"""The root's service: everything ``serve`` runs, built and started in order, closed in reverse.

Built once, in this order: the engine, store, clock, the Slack client and the use cases
(``bot.root.core``), the listener for other processes' commits (PostgreSQL), this worker's
liveness, the Slack adapter (``bot.root.slack``), the agent runner and its models, the
scheduler, the MCP app and the HTTP server (``bot.root.server``), then Socket Mode and the
background loops.
"""

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import timedelta

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import ConfigurationError
from bot.limits import CallBudget
from bot.metrics import Metrics
from bot.model_hosts import ModelHosts
from bot.root.core import Core, Overrides, build_core, check_secrets, worker_id
from bot.root.server import http_app, scrape_routes, start_http, start_mcp
from bot.root.slack import Slack, wire_slack
from bot.runtime.models import ModelBook
from bot.runtime.runner import AgentRunner, RunnerSettings
from bot.runtime.toolbox import ToolBoxSettings
from bot.settings import Settings
from bot.signal import Queued
from bot.supervisor import Supervisor
from bot.tools import TaskTools
from bot.workers import Liveness
from channels.mcp.asgi import AsgiMount
from channels.mcp.server import MCP_PATH, build_mcp_app, build_mcp_server, transport_security
from channels.mcp.task_server import build_tool_server
from channels.mcp.tool_client import McpToolConnector
from channels.metrics import PrometheusMetrics
from channels.models.clients import SdkModelClients
from channels.slack.client import close_client, web_client
from scheduler.jobs import build_scheduler
from store.database import create_engine
from store.migrate import upgrade
from store.notify import ChangeListener, listener_for

logger = structlog.get_logger(__name__)

#: At shutdown, how long acknowledged work (thread posts waiting to be stored) may take.
SHUTDOWN_DRAIN_SECONDS = 10.0


@dataclass
class Service:
    """Everything ``serve`` runs, started; tests reach into it to drive work by hand."""

    core: Core
    #: Short-lived background work (App Home renders, storing thread posts, agent runs).
    supervisor: Supervisor
    slack: Slack | None
    runner: AgentRunner
    models: ModelBook
    scheduler: AsyncIOScheduler
    #: The HTTP server's base URL, e.g. ``http://127.0.0.1:3000``.
    url: str
    #: Where external agents connect (None when the MCP endpoint is off).
    mcp_url: str | None
    #: This process as a worker: its heartbeat and the takeover of dead workers' claims.
    liveness: Liveness
    #: Hears other processes' commits (PostgreSQL; None on SQLite).
    listener: ChangeListener | None = None


@asynccontextmanager
async def open_service(
    settings: Settings, overrides: Overrides | None = None, socket_mode: bool = False
) -> AsyncIterator[Service]:
    """Builds and starts the whole service; on exit closes it all, in reverse order.

    Slack is wired when SLACK_BOT_TOKEN is set (``serve`` insists on it); with
    ``socket_mode``, events come over Socket Mode instead of HTTP.
    """
    overrides = overrides or Overrides()
    # One name for this process: on its claims, its heartbeat and its notifications.
    worker = overrides.worker or worker_id()
    overrides = replace(overrides, worker=worker)
    async with AsyncExitStack() as stack:
        metrics = PrometheusMetrics()
        core, client = await _open_core_and_client(stack, settings, overrides, metrics)
        listener = await _listen(stack, core)
        liveness = Liveness(
            core.store,
            core.clock,
            worker,
            timedelta(seconds=settings.worker_timeout),
            notify=core.signal.notify,
        )
        # Deregisters last, once nothing of this process claims any more; hands back what is
        # still held.
        stack.push_async_callback(liveness.stop)
        supervisor, loops = Supervisor(), Supervisor()
        stack.push_async_callback(loops.close)
        slack = (
            wire_slack(core, client, supervisor, liveness, overrides, socket_mode)
            if client
            else None
        )
        # Acknowledged work finishes (bounded); what is cut off is found again by the
        # reconcile's thread probe.
        stack.push_async_callback(supervisor.close_within, SHUTDOWN_DRAIN_SECONDS)
        runner, models = _wire_runner(core, supervisor, worker, slack, overrides)
        stack.push_async_callback(models.close)
        stack.push_async_callback(runner.close)
        liveness.when_lost(runner.abandon)
        if slack is not None:
            liveness.when_lost(slack.delivery.abandon)
        await liveness.start(beat=overrides.run_loops)
        scheduler = build_scheduler(
            core.reconciler,
            settings.reconcile_interval,
            slack.gateway.prune_inbound_event_ids if slack else None,
            metrics=core.metrics,
            prune_tool_requests=core.work.prune_tool_requests,
        )
        mcp_app = build_mcp_app(
            build_mcp_server(
                core.registry, core.tools_for, CallBudget(settings.agent_calls_per_minute)
            ),
            core.registry,
            transport_security(settings.public_url, settings.host),
        )
        mount = AsgiMount(mcp_app, MCP_PATH) if settings.mcp_port is None else None
        scheduler.start()
        stack.callback(_stop_scheduler, scheduler)
        mcp_url = await start_mcp(stack, settings, mcp_app, mount)
        web_app = http_app(core, scheduler, slack, mount, scrape_routes(core, metrics, runner))
        web_app.add_routes(overrides.routes)
        url = await start_http(stack, web_app, settings.host, _port(settings, overrides))
        mcp_url = url + MCP_PATH if mount is not None else mcp_url
        await _start_intake_and_loops(stack, loops, slack, runner, overrides.run_loops)
        logger.info("serve.started", url=url, mcp_url=mcp_url, slack=slack is not None)
        yield Service(
            core, supervisor, slack, runner, models, scheduler, url, mcp_url, liveness, listener
        )
    logger.info("serve.stopped")


async def _open_core_and_client(
    stack: AsyncExitStack, settings: Settings, overrides: Overrides, metrics: Metrics
) -> tuple[Core, AsyncWebClient | None]:
    """The engine (migrated), the Slack client when Slack is configured, and the use cases;
    raises SecretsNotConfigured before anything starts when stored secrets have no key."""
    engine = create_engine(settings.database_url)
    stack.push_async_callback(engine.dispose)
    await upgrade(engine)
    client = web_client(settings, metrics) if settings.slack_bot_token else None
    if client is not None:
        stack.push_async_callback(close_client, client)
    core = build_core(settings, engine, overrides, client, metrics)
    await check_secrets(core)
    return core, client


async def _listen(stack: AsyncExitStack, core: Core) -> ChangeListener | None:
    """On PostgreSQL, starts hearing other processes' commits, which wake outbox delivery, the
    runner and agents' long polls here as this process's own commits do; closed at exit."""
    listener = listener_for(core.engine, core.store.sender, core.signal.notify)
    if listener is not None:
        await listener.start()
        stack.push_async_callback(listener.close)
    return listener


async def _start_intake_and_loops(
    stack: AsyncExitStack,
    loops: Supervisor,
    slack: Slack | None,
    runner: AgentRunner,
    run_loops: bool,
) -> None:
    """Connects Socket Mode (closed first at shutdown), then starts delivery and the runner."""
    if slack is not None and slack.socket is not None:
        await slack.socket.connect()  # type: ignore[no-untyped-call]  # untyped in slack_sdk
        stack.push_async_callback(slack.socket.close)
    if run_loops:
        if slack is not None:
            loops.spawn(slack.delivery.run(), name="outbox-delivery")
        loops.spawn(runner.run(), name="agent-runner")


def _port(settings: Settings, overrides: Overrides) -> int:
    return settings.port if overrides.port is None else overrides.port


def _wire_runner(
    core: Core, supervisor: Supervisor, worker: str, slack: Slack | None, overrides: Overrides
) -> tuple[AgentRunner, ModelBook]:
    """The built-in agents' model clients and the runner that claims their wake-ups."""
    settings = core.settings
    fallback = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
    models = ModelBook(
        core.registry,
        SdkModelClients(settings.anthropic_base_url),
        fallback,
        model_hosts=ModelHosts(frozenset(settings.model_hosts)),
        scripts=overrides.scripts,
    )
    runner = AgentRunner(
        core.store,
        core.work,
        core.registry,
        build_tool_server(_no_remote_callers),
        core.tools_for,
        models,
        core.clock,
        supervisor,
        worker,
        RunnerSettings(
            max_steps=settings.agent_max_steps,
            poll=overrides.poll_s,
            toolbox=ToolBoxSettings(
                start_timeout_s=settings.tool_server_start_timeout,
                call_timeout_s=settings.tool_call_timeout,
            ),
        ),
        streams=slack.streams if slack else None,
        tool_servers=McpToolConnector(),
    )
    if overrides.runner_wakes_on_commit:
        core.signal.subscribe(runner.wake, to=Queued.WAKEUPS)
    return runner, models


async def _no_remote_callers(_headers: Mapping[str, str] | None) -> TaskTools:
    """The runner's tool server only lists the tools; nothing calls it over the network."""
    raise ConfigurationError("the built-in runtime's tool server takes no remote calls")


def _stop_scheduler(scheduler: AsyncIOScheduler) -> None:
    if scheduler.running:
        scheduler.shutdown(wait=False)
