"""The composition root: the one place where every long-lived object is built, and closed.

Built once, in this order: settings (given), engine, store, clock, the Slack client, the use
cases and the one reconciler (with Slack's thread probe when Slack is wired, and on PostgreSQL
an advisory lock across replicas), the listener for other processes' commits (PostgreSQL),
outbox delivery,
the reply inbox, the Bolt app and its gateway, the agent runner, the MCP app, the scheduler and
the HTTP server. They are closed in reverse order. The service, the CLI, tests and benchmarks
all get their objects here, with ``Overrides`` for the clock, keys, pacing and ports; nothing
else rebuilds this wiring.

This is the only module under ``bot/`` that imports ``channels``, ``store`` or ``scheduler``
(but for ``bot/cli.py`` starting ``threadwork worker``: a client of the service that builds none
of these objects, wired by ``channels/agent_cli/main.py``). ``threadwork sandbox`` runs the service
built here, with its embedded Slack workspace and page around it (``channels/sandbox/main.py``).
"""

import asyncio
import gc
import os
import secrets
import signal as signals
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial

import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp

from bot.access import Access, AdminList, ConfiguredAdmins, EveryoneIsMember, Membership
from bot.admin import AdminDesk
from bot.agent_work import AgentWork
from bot.board import Board
from bot.budget import SLACK_HISTORY, Budget, Rate, SharedBudget
from bot.channel_policies import ChannelPolicies
from bot.clock import Clock, utc_now
from bot.dead_letters import DeadLetters
from bot.delivery import Deliverer, DeliverySettings, OutboxDelivery
from bot.errors import ConfigurationError
from bot.gauges import GaugeQueries
from bot.inbox import ReplyInbox
from bot.limits import CallBudget
from bot.metrics import Metrics, NoMetrics
from bot.model_hosts import ModelHosts
from bot.outbox import new_key
from bot.pacing import SharedPace
from bot.ports.tick_lock import TickLock
from bot.queries import TaskQueries
from bot.reconcile import ProgressProbe, Reconciler
from bot.registry import AgentRegistry
from bot.runtime.model import AgentModel
from bot.runtime.models import ModelFactory
from bot.runtime.runner import AgentRunner, RunnerSettings
from bot.secrets import SecretBox
from bot.settings import Settings
from bot.signal import ChangeSignal, Queued
from bot.supervisor import Supervisor
from bot.thread_posts import ThreadPosts
from bot.tool_server_policy import ToolServerPolicy
from bot.tools import POLL_S, TaskTools, ToolsFor, make_caller_factory
from bot.workers import FencedDeliverer, Liveness
from channels.health import Check, database_check, health_routes
from channels.mcp.asgi import AsgiMount
from channels.mcp.bridge import run_stdio_bridge
from channels.mcp.server import (
    MCP_PATH,
    McpHttpServer,
    build_mcp_app,
    build_mcp_server,
    transport_security,
)
from channels.mcp.task_server import build_tool_server
from channels.mcp.tool_client import McpToolConnector
from channels.metrics import PrometheusMetrics, metrics_routes
from channels.slack.adapter_http import slack_routes
from channels.slack.app import build_bolt_app
from channels.slack.client import AuthCheck, close_client, missing_settings, web_client
from channels.slack.delivery import SlackDeliverer
from channels.slack.events import store_replies
from channels.slack.gateway import SlackGateway, SlackSignature
from channels.slack.membership import SlackMembership
from channels.slack.probe import SlackThreadProbe
from channels.slack.services import AdminCheck, SlackServices
from channels.slack.socket_mode import build_socket_client
from channels.slack.stream import SlackThreadStreams
from scheduler.jobs import build_scheduler
from store.database import create_engine, is_transient
from store.gauges import SqlGauges
from store.migrate import current_revision, head_revision, upgrade
from store.notify import ChangeListener, listener_for
from store.repository import SqlStore
from store.tick_lock import reconcile_lock

logger = structlog.get_logger(__name__)

#: At shutdown, how long acknowledged work (thread posts waiting to be stored) may take.
SHUTDOWN_DRAIN_SECONDS = 10.0
#: At shutdown, how long requests in flight may take once the server stops listening; a stream
#: still open then (an MCP client's event stream) is ended.
SHUTDOWN_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Overrides:
    """What tests, benchmarks and the sandbox may replace; production uses the defaults."""

    clock: Clock = utc_now
    new_key: Callable[[], str] = new_key
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    #: Replaces Slack's thread probe in the reconcile (None: Slack's, when Slack is wired).
    probe: ProgressProbe | None = None
    #: Replaces who is a member of which channel (None: Slack's, or everyone without Slack).
    membership: Membership | None = None
    reconcile_batch: int = 1000
    #: This process's name on the claims it takes (None: host and pid).
    worker: str | None = None
    #: The HTTP port (None: PORT; 0: any free port).
    port: int | None = None
    #: Run outbox delivery, the agent runner and the heartbeat in the background (tests drive
    #: them by hand).
    run_loops: bool = True
    #: Wake the runner when a commit queues a wake-up (benchmarks turn it off to measure the
    #: runner on its poll alone).
    runner_wakes_on_commit: bool = True
    #: How often the agent runner and agents' ``wait_for_work`` look for work when nothing woke
    #: them (outbox delivery's is ``delivery.idle_poll``). Tests lengthen it to show that
    #: another process's commit woke them through PostgreSQL's NOTIFY.
    poll_s: float = POLL_S
    #: Replaces the reconcile's lock across replicas (None: PostgreSQL's advisory lock; always
    #: held on SQLite). Tests of the compare-and-set alone pass ``SoleReplica()``.
    reconcile_lock: TickLock | None = None
    #: More routes on the HTTP server (``threadwork sandbox``'s page and its workspace).
    routes: Sequence[web.AbstractRouteDef] = ()
    #: The models of ``scripted`` agents, by name (``threadwork sandbox``'s demo).
    scripts: Mapping[str, AgentModel] = field(default_factory=dict)


def worker_id() -> str:
    """This process's name on the claims it takes: host, pid and a random tag (a restarted
    container has the same host and pid, but is not the worker that died)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Core:
    """The use cases over one database, with no chat platform or agent runtime attached."""

    settings: Settings
    engine: AsyncEngine
    store: SqlStore
    clock: Clock
    signal: ChangeSignal
    board: Board
    thread_posts: ThreadPosts
    channel_policies: ChannelPolicies
    registry: AgentRegistry
    work: AgentWork
    queries: TaskQueries
    reconciler: Reconciler
    dead_letters: DeadLetters
    admin: AdminDesk
    #: Slack's thread reads (the probe's and the outbox's lookups), shared by every replica.
    history_budget: Budget
    #: Where the use cases count what they do (the CLI's counts nothing).
    metrics: Metrics = field(default_factory=NoMetrics)
    #: How often agents' ``wait_for_work`` looks for work no signal told it of.
    poll_s: float = POLL_S

    @property
    def tools_for(self) -> ToolsFor:
        """The agent tool set as one agent sees it (pinned to an epoch for a built-in run)."""
        return make_caller_factory(
            self.store, self.board, self.work, self.clock, self.signal, self.poll_s
        )


def build_reconciler(
    store: SqlStore,
    settings: Settings,
    signal: ChangeSignal,
    overrides: Overrides,
    probe: ProgressProbe | None,
) -> Reconciler:
    """The one reconcile: the service's, the CLI's and the tests' are built here."""
    return Reconciler(
        store,
        overrides.clock,
        settings.lease_policy,
        overrides.new_key,
        probe=overrides.probe or probe,
        batch_size=overrides.reconcile_batch,
        notify=signal.notify,
        lock=overrides.reconcile_lock or reconcile_lock(store.engine),
    )


def build_core(
    settings: Settings,
    engine: AsyncEngine,
    overrides: Overrides | None = None,
    client: AsyncWebClient | None = None,
    metrics: Metrics | None = None,
) -> Core:
    """The use cases on an engine the caller owns (and disposes of). With Slack's ``client``,
    membership and admins come from Slack and the reconcile reads threads before acting."""
    overrides = overrides or Overrides()
    metrics = metrics or NoMetrics()
    store = SqlStore(engine, sender=overrides.worker or worker_id())
    clock = overrides.clock
    signal = ChangeSignal()
    policy = settings.lease_policy
    registry = AgentRegistry(
        store,
        clock,
        secret_box(settings),
        model_hosts=ModelHosts(frozenset(settings.model_hosts)),
        notify=signal.notify,
        max_tool_servers=settings.agent_tool_servers,
        tool_server_policy=ToolServerPolicy(
            frozenset(settings.tool_server_commands), frozenset(settings.tool_server_hosts)
        ),
    )
    access = _access(settings, overrides, client, registry)
    board = Board(store, clock, policy, overrides.new_key, notify=signal.notify, access=access)
    thread_posts = ThreadPosts(store, clock, overrides.new_key, notify=signal.notify)
    channel_policies = ChannelPolicies(store, clock, policy, notify=signal.notify)
    history_rate = Rate.per_minute_bursting(settings.slack_history_per_minute)
    history_budget = SharedBudget(store, SLACK_HISTORY, history_rate, clock)
    probe = (
        SlackThreadProbe(client, registry, thread_posts, clock, history_budget) if client else None
    )
    queries = TaskQueries(store, clock, policy, access)
    signal.subscribe(queries.forget_directory, to=Queued.DIRECTORY)
    reconciler = build_reconciler(store, settings, signal, overrides, probe)
    dead_letters = DeadLetters(store, clock, notify=signal.notify)
    return Core(
        settings=settings,
        engine=engine,
        store=store,
        clock=clock,
        signal=signal,
        board=board,
        thread_posts=thread_posts,
        channel_policies=channel_policies,
        registry=registry,
        work=AgentWork(
            store, clock, overrides.new_key, notify=signal.notify, metrics=metrics, policy=policy
        ),
        queries=queries,
        reconciler=reconciler,
        dead_letters=dead_letters,
        admin=AdminDesk(access, registry, channel_policies, reconciler, queries, dead_letters),
        history_budget=history_budget,
        metrics=metrics,
        poll_s=overrides.poll_s,
    )


@asynccontextmanager
async def open_core(settings: Settings, overrides: Overrides | None = None) -> AsyncIterator[Core]:
    """Opens the database and builds the use cases (for the CLI and tests); closes the engine."""
    engine = create_engine(settings.database_url)
    try:
        yield build_core(settings, engine, overrides or Overrides())
    finally:
        await engine.dispose()


async def migrate(core: Core, revision: str = "head") -> None:
    """Applies the database migrations up to ``revision``."""
    await upgrade(core.engine, revision)


async def schema_revisions(core: Core) -> tuple[str | None, str]:
    """The revision the database is at (None before any) and the one this code needs."""
    return await current_revision(core.engine), head_revision()


def secret_box(settings: Settings) -> SecretBox | None:
    """The agent secrets' keys: THREADWORK_SECRET_KEY, and THREADWORK_SECRET_KEY_PREVIOUS for
    rows not yet rotated; None when no key is set."""
    if settings.secret_key is None:
        return None
    previous = settings.secret_key_previous
    return SecretBox(
        settings.secret_key.get_secret_value(),
        previous.get_secret_value() if previous else None,
    )


class SecretsNotConfigured(Exception):
    """Agent secrets are stored but THREADWORK_SECRET_KEY is not set; the message says so."""


async def check_secrets(core: Core) -> None:
    """Refuses to start with stored secrets and no key to read them; warns when some stored
    secrets open under none of the configured keys (their agents then have no key)."""
    report = await core.registry.secrets_report()
    if report.stored and core.settings.secret_key is None:
        raise SecretsNotConfigured(
            f"THREADWORK_SECRET_KEY is not set, but {report.stored} agent secret(s) are stored "
            "encrypted: set it to the key they were stored with (README, 'Configuration')."
        )
    if report.readable < report.stored:
        logger.warning("secrets.unreadable", count=report.stored - report.readable)


async def check_secrets_before_start(settings: Settings) -> None:
    """:func:`check_secrets` before ``serve`` starts (and logs), when no key is set and the
    schema is current; otherwise the same check runs inside :func:`open_service`."""
    if settings.secret_key is not None:
        return
    async with open_core(settings) as core:
        current, head = await schema_revisions(core)
        if current == head:
            await check_secrets(core)


class SlackNotConfigured(Exception):
    """Slack credentials are missing; the message names them and where to get them."""


def check_slack_settings(settings: Settings, socket_mode: bool) -> None:
    """Raises SlackNotConfigured naming every missing variable for this mode."""
    missing = missing_settings(settings, socket_mode)
    if missing:
        raise SlackNotConfigured(
            f"{', '.join(missing)} not set: create the Slack app from manifest.yml and set them "
            "(README, 'Create the Slack app')."
        )


@dataclass
class Slack:
    """The Slack adapter as wired: client, gateway, delivery and the runner's thread streams."""

    client: AsyncWebClient
    auth: AuthCheck
    gateway: SlackGateway
    delivery: OutboxDelivery
    streams: SlackThreadStreams
    socket: SocketModeClient | None = None


@dataclass
class Service:
    """Everything ``serve`` runs, started; tests reach into it to drive work by hand."""

    core: Core
    #: Short-lived background work (App Home renders, storing thread posts, agent runs).
    supervisor: Supervisor
    slack: Slack | None
    runner: AgentRunner
    models: ModelFactory
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
            _wire_slack(core, client, supervisor, liveness, overrides, socket_mode)
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
        mcp_url = await _start_mcp(stack, settings, mcp_app, mount)
        web_app = _web_app(core, scheduler, slack, mount, _scrape(core, metrics, runner))
        web_app.add_routes(overrides.routes)
        url = await _start_http(stack, web_app, settings.host, _port(settings, overrides))
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


async def _start_mcp(
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


def _web_app(
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


def _scrape(core: Core, metrics: PrometheusMetrics, runner: AgentRunner) -> list[web.RouteDef]:
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


async def _start_http(stack: AsyncExitStack, app: web.Application, host: str, port: int) -> str:
    """Serves ``app``; returns its base URL (with the port bound, when ``port`` is 0)."""
    http = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await http.setup()
    stack.push_async_callback(http.cleanup)  # no more requests: what was acked finishes next
    site = web.TCPSite(http, host, port)
    await site.start()
    return f"http://{host}:{_bound_port(site)}"


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


def _end_long_polls(signal: ChangeSignal) -> Callable[[web.Application], Awaitable[None]]:
    """Once the server stops listening, agents' ``wait_for_work`` calls answer "nothing came"
    at once, so the wait for requests in flight does not wait on them."""

    async def on_shutdown(_app: web.Application) -> None:
        signal.close()

    return on_shutdown


def _access(
    settings: Settings,
    overrides: Overrides,
    client: AsyncWebClient | None,
    registry: AgentRegistry,
) -> Access:
    """People's rights: membership and admins as Slack says, or, with no chat platform (the
    CLI, core tests), the operator's view where everyone is a member."""
    membership: Membership = (
        overrides.membership or (SlackMembership(client) if client else None) or EveryoneIsMember()
    )
    admins: AdminList = (
        AdminCheck(client, frozenset(settings.admins), settings.workspace_admins)
        if client
        else ConfiguredAdmins(settings.admins)
    )
    return Access(membership, admins, registry)


def _wire_slack(
    core: Core,
    client: AsyncWebClient,
    supervisor: Supervisor,
    liveness: Liveness,
    overrides: Overrides,
    socket_mode: bool,
) -> Slack:
    """Outbox delivery, the inbox, the Bolt app and its gateway, around the core."""
    settings = core.settings
    deliverer: Deliverer = SlackDeliverer(
        client, core.queries, core.thread_posts, core.clock, budget=core.history_budget
    )
    if overrides.run_loops:  # tests that drive delivery by hand also drive the heartbeat
        deliverer = FencedDeliverer(deliverer, liveness)
    delivery = OutboxDelivery(
        core.store,
        deliverer,
        core.clock,
        liveness.worker,
        overrides.delivery,
        metrics=core.metrics,
        shared=_shared_pace(core),
    )
    core.signal.subscribe(delivery.wake, to=Queued.OUTBOX)

    inbox = ReplyInbox(
        partial(store_replies, core.thread_posts), supervisor, is_transient=is_transient
    )
    services = SlackServices(
        board=core.board,
        registry=core.registry,
        queries=core.queries,
        access=core.board.access,
        clock=core.clock,
        client=client,
        supervisor=supervisor,
        inbox=inbox,
        admin=core.admin,
        history=core.history_budget,
    )
    secret = settings.slack_signing_secret
    signature = SlackSignature(secret.get_secret_value()) if secret else None
    gateway = SlackGateway(
        build_bolt_app(services, client), core.store, core.clock, signature, core.metrics
    )
    slack = Slack(client, AuthCheck(client), gateway, delivery, SlackThreadStreams(client))
    if socket_mode:
        assert settings.slack_app_token is not None
        token = settings.slack_app_token.get_secret_value()
        slack.socket = build_socket_client(token, client, gateway)
    return slack


def _shared_pace(core: Core) -> SharedPace | None:
    """On PostgreSQL, where several replicas may deliver, Slack's limits are kept across them
    by buckets in the database; one SQLite process paces in memory alone."""
    if core.engine.dialect.name != "postgresql":
        return None
    return SharedPace(core.store, core.clock, asyncio.sleep)


def _wire_runner(
    core: Core, supervisor: Supervisor, worker: str, slack: Slack | None, overrides: Overrides
) -> tuple[AgentRunner, ModelFactory]:
    """The built-in agents' model clients and the runner that claims their wake-ups."""
    settings = core.settings
    fallback = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
    models = ModelFactory(
        core.registry,
        fallback,
        settings.anthropic_base_url,
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
        RunnerSettings(max_steps=settings.agent_max_steps, poll=overrides.poll_s),
        streams=slack.streams if slack else None,
        tool_servers=McpToolConnector(),
    )
    if overrides.runner_wakes_on_commit:
        core.signal.subscribe(runner.wake, to=Queued.WAKEUPS)
    return runner, models


async def _no_remote_callers(_headers: Mapping[str, str] | None) -> TaskTools:
    """The runner's tool server only lists the tools; nothing calls it over the network."""
    raise ConfigurationError("the built-in runtime's tool server takes no remote calls")


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


def _stop_scheduler(scheduler: AsyncIOScheduler) -> None:
    if scheduler.running:
        scheduler.shutdown(wait=False)


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the listening server here once started
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    socket_mode: bool = False,
    overrides: Overrides | None = None,
) -> None:
    """Runs the service until SIGINT or SIGTERM (or ``stop``), then closes it cleanly."""
    check_slack_settings(settings, socket_mode)
    stop = stop or _stop_on_signals()
    async with open_service(settings, overrides, socket_mode):
        freeze_start_up()
        await stop.wait()


def freeze_start_up() -> None:
    """Moves what start-up built (modules, SDK schemas, caches: about 300,000 objects) out of
    the garbage collector's reach. Otherwise each full collection walks all of them, a pause
    of about 200 ms on this service's hosts that stalls every request in flight."""
    gc.collect()
    gc.freeze()


async def bridge_stdio(url: str, token: str) -> None:
    """Serves the agent tools on stdin and stdout, each call relayed to the endpoint at ``url``
    as the token's agent (for MCP clients that only launch local commands)."""
    await run_stdio_bridge(url, token)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for a clean shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signals.SIGINT, signals.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
