"""``threadwork sandbox``'s wiring: the real service, with a Slack workspace and a page around it.

The service is ``bot.root.open_service``'s, as ``serve`` builds it; what the sandbox adds stands
where Slack and a browser would: the workspace's Web API (on its own loopback port), the event
source that signs people's actions into the service's gateway, the page's routes on the
service's port, and the ``demo`` agent's script behind the model port. Nothing leaves the
machine and no credential is needed: the bot token and signing secret are made at each start,
the secrets key once (kept beside the database). Short leases and a frequent reconcile make a
stuck agent's re-dispatch, then block, watchable in a minute or two.
"""

import asyncio
import base64
import secrets
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, closing, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.agents import AgentKind, AgentSettings, Autonomy
from bot.clock import utc_now
from bot.errors import DomainError
from bot.root import Overrides, Service, freeze_start_up, open_service
from bot.runtime.scripted_model import WORD_S, ScriptedModel
from bot.settings import Settings
from channels.sandbox.events import EventSource
from channels.sandbox.hood import Hood
from channels.sandbox.slack_api import SlackWebApi
from channels.sandbox.web import SandboxPage
from channels.sandbox.workspace import (
    ADMIN,
    GENERAL,
    MEMBER,
    PRIVATE_OPS,
    WorkspaceFile,
    seeded_api,
)
from scheduler.jobs import RECONCILE_JOB_ID

logger = structlog.get_logger(__name__)

DEMO, LOCAL_AGENT = "demo", "local-agent"
#: How often the workspace is written to its file while it changes.
SAVE_EVERY_S = 1.0
#: Environment variables passed on to the service: real agents' model endpoints and keys.
PASSED_ON = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "THREADWORK_MODEL_HOSTS")


@dataclass(frozen=True)
class SandboxOptions:
    port: int = 3000
    db: Path = Path("threadwork-sandbox.db")
    host: str = "127.0.0.1"
    #: Short, so a stuck agent's lease lapses within a minute.
    lease_ttl_s: float = 30.0
    reconcile_every_s: float = 5.0
    max_attempts: int = 2
    #: How long each of the demo agent's words takes (0: at once, for tests).
    demo_word_s: float = WORD_S


@dataclass
class Sandbox:
    """A running sandbox: the service, the workspace, and what to tell the person."""

    service: Service
    api: SlackWebApi
    events: EventSource
    demo: ScriptedModel
    db: Path
    #: The bearer token of ``local-agent`` at the MCP endpoint (new at each start).
    mcp_token: str
    #: Real agents added because their model endpoint or key is set.
    real_agents: tuple[str, ...]

    @property
    def url(self) -> str:
        return self.service.url

    def banner(self) -> str:
        """What ``threadwork sandbox`` prints once the page answers."""
        mcp = self.service.mcp_url or "(off)"
        agents = ", ".join(("demo (scripted, not an LLM)", "local-agent (external, MCP)"))
        agents += "".join(f", {name}" for name in self.real_agents)
        return "\n".join(
            [
                "threadwork sandbox: the real service, with a Slack workspace of its own in this",
                "process. This is a sandbox, not Slack; nothing leaves this machine.",
                "",
                f"  Open       {self.url}",
                f"  Database   {self.db} (restart to see everything kept)",
                f"  Agents     {agents}",
                f"  MCP        {mcp}",
                f"  Token      {self.mcp_token}   (local-agent's, new at each start)",
                f"  Try        THREADWORK_MCP_URL={mcp} THREADWORK_MCP_TOKEN={self.mcp_token} \\",
                "             threadwork worker --repo . --preset claude-code   # in a git checkout",
                "",
                "Stop with Ctrl-C.",
            ]
        )


def sandbox_settings(
    options: SandboxOptions, api: SlackWebApi, signing: str, key: str, env: Mapping[str, str]
) -> Settings:
    """The service's settings: the workspace's Web API as Slack, the database file, short
    leases; real agents' keys and endpoints come from ``env``."""
    values: dict[str, Any] = {name: env[name] for name in PASSED_ON if env.get(name)}
    values |= {
        "DATABASE_URL": f"sqlite:///{options.db}",
        "HOST": options.host,
        "PORT": options.port or 3000,  # the port bound is the override's (0: any free port)
        "SLACK_BOT_TOKEN": api.token,
        "SLACK_SIGNING_SECRET": signing,
        "SLACK_API_URL": api.url,
        "THREADWORK_ADMINS": ADMIN,
        "THREADWORK_SECRET_KEY": key,
        "THREADWORK_LEASE_TTL": options.lease_ttl_s,
        "THREADWORK_RECONCILE_INTERVAL": options.reconcile_every_s,
        "THREADWORK_MAX_DISPATCH_ATTEMPTS": options.max_attempts,
    }
    return Settings(**values)


@asynccontextmanager
async def open_sandbox(options: SandboxOptions, env: Mapping[str, str]) -> AsyncIterator[Sandbox]:
    """Starts the workspace, the service and the page; closes them in reverse order."""
    db = options.db.resolve()
    options = SandboxOptions(**(options.__dict__ | {"db": db}))
    file = WorkspaceFile.beside(db)
    api = seeded_api(utc_now, "xoxb-sandbox-" + secrets.token_hex(12))
    fresh = not db.exists() or not file.load(api)
    demo = ScriptedModel(word_s=options.demo_word_s)
    async with aiohttp.ClientSession() as http:
        await api.start(options.host)
        try:
            events = EventSource(api, secrets.token_hex(32), http)
            page = SandboxPage(events, demo)
            key = file.secret_key(_new_secret_key)
            settings = sandbox_settings(options, api, events.secret, key, env)
            overrides = Overrides(port=options.port, routes=page.routes(), scripts={DEMO: demo})
            async with open_service(settings, overrides) as service:
                with closing(page):  # ends open streams on every way out, before the service
                    events.url = service.url + "/slack/events"
                    page.hood = _hood(service, settings)
                    sandbox = await _ready(service, api, events, demo, db, env)
                    if fresh:
                        await _seed(events)
                    api.watch(page.changes.bump)
                    service.core.signal.subscribe(page.changes.bump)
                    async with _kept(api, file):
                        yield sandbox
        finally:
            await api.close()


def _hood(service: Service, settings: Settings) -> Hood:
    return Hood(
        service.core.store,
        service.core.clock,
        settings.lease_policy,
        settings.reconcile_interval,
        lambda: _next_run(service.scheduler),
    )


def _next_run(scheduler: AsyncIOScheduler) -> datetime | None:
    job = scheduler.get_job(RECONCILE_JOB_ID)
    return job.next_run_time if job is not None else None


async def _ready(
    service: Service,
    api: SlackWebApi,
    events: EventSource,
    demo: ScriptedModel,
    db: Path,
    env: Mapping[str, str],
) -> Sandbox:
    """Registers the sandbox's agents (again, at each start) and a fresh MCP token."""
    registry = service.core.registry
    await registry.add_agent(
        DEMO,
        AgentKind.SCRIPTED,
        display_name="Demo (scripted)",
        settings=AgentSettings(autonomy=Autonomy.WAIT),
    )
    await registry.add_agent(LOCAL_AGENT, display_name="Local agent (MCP)")
    await registry.revoke_tokens(LOCAL_AGENT)
    token = await registry.issue_token(LOCAL_AGENT)
    real = await _real_agents(service, env)
    return Sandbox(service, api, events, demo, db, token, real)


async def _real_agents(service: Service, env: Mapping[str, str]) -> tuple[str, ...]:
    """``claude`` when ANTHROPIC_API_KEY is set; ``local-llm`` when OPENAI_BASE_URL names an
    OpenAI-compatible endpoint (OPENAI_MODEL, OPENAI_API_KEY optional). One the registry
    refuses (a malformed URL) is left out, with a warning."""
    registry, added = service.core.registry, []
    try:
        if env.get("ANTHROPIC_API_KEY"):
            await registry.add_agent("claude", AgentKind.CLAUDE, display_name="Claude")
            added.append("claude")
        if env.get("OPENAI_BASE_URL"):
            model, url = env.get("OPENAI_MODEL"), env["OPENAI_BASE_URL"]
            settings = AgentSettings(model=model, base_url=url)
            await registry.add_agent(
                "local-llm", AgentKind.OPENAI, display_name="Local LLM", settings=settings
            )
            if env.get("OPENAI_API_KEY"):
                await registry.set_api_key("local-llm", env["OPENAI_API_KEY"])
            added.append("local-llm")
    except DomainError as exc:
        logger.warning("sandbox.real_agent_refused", error=exc.message)
    return tuple(added)


async def _seed(events: EventSource) -> None:
    """A new workspace's first messages, said through the gateway as people would."""
    await events.message(
        MEMBER,
        GENERAL,
        "Welcome to the threadwork sandbox! Type `/task new Write the release notes` below, "
        "then pick the demo agent in the card's menu and watch it work.",
    )
    await events.command(ADMIN, PRIVATE_OPS, "/task new Rotate the on-call pager keys")


@asynccontextmanager
async def _kept(api: SlackWebApi, file: WorkspaceFile) -> AsyncIterator[None]:
    """Writes the workspace to its file about once a second while it changes, and at exit."""
    dirty = asyncio.Event()
    api.watch(dirty.set)

    async def keep() -> None:
        while True:
            await dirty.wait()
            dirty.clear()
            file.save(api)
            await asyncio.sleep(SAVE_EVERY_S)

    saver = asyncio.create_task(keep(), name="sandbox-workspace-file")
    try:
        yield
    finally:
        saver.cancel()
        with suppress(asyncio.CancelledError):
            await saver
        file.save(api)


def _new_secret_key() -> str:
    """A THREADWORK_SECRET_KEY: 32 random bytes in URL-safe base64."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


async def run_sandbox(options: SandboxOptions, env: Mapping[str, str]) -> None:
    """Runs the sandbox until SIGINT or SIGTERM, printing where to open it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with open_sandbox(options, env) as sandbox:
        freeze_start_up()
        print(sandbox.banner(), flush=True)
        await stop.wait()
