"""The root's core: the use cases over one database, with no chat platform or agent runtime.

``build_core`` wires them on an engine the caller owns, ``open_core`` opens that engine for the
CLI and tests, and the one reconciler is built by ``build_reconciler``. The secrets checks refuse
to start with agent secrets stored and no key to read them.
"""

import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.access import Access, AdminList, ConfiguredAdmins, EveryoneIsMember, Membership
from bot.admin import AdminDesk
from bot.agent_work import AgentWork
from bot.board import Board
from bot.budget import SLACK_HISTORY, Budget, Rate, SharedBudget
from bot.channel_policies import ChannelPolicies
from bot.clock import Clock, utc_now
from bot.dead_letters import DeadLetters
from bot.delivery import DeliverySettings
from bot.metrics import Metrics, NoMetrics
from bot.model_hosts import ModelHosts
from bot.outbox import new_key
from bot.ports.tick_lock import TickLock
from bot.queries import TaskQueries
from bot.reconcile import ProgressProbe, Reconciler
from bot.registry import AgentRegistry
from bot.runtime.model import AgentModel
from bot.secrets import SecretBox
from bot.settings import Settings
from bot.signal import ChangeSignal, Queued
from bot.thread_posts import ThreadPosts
from bot.tool_server_policy import ToolServerPolicy
from bot.tools import POLL_S, ToolsFor, make_caller_factory
from channels.slack.membership import SlackMembership
from channels.slack.probe import SlackThreadProbe
from channels.slack.services import AdminCheck
from store.database import create_engine
from store.migrate import current_revision, head_revision, upgrade
from store.repository import SqlStore
from store.tick_lock import reconcile_lock

logger = structlog.get_logger(__name__)


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
