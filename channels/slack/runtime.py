"""Builds the Slack side of the service from settings and the core: client, app, delivery."""

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from functools import partial

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

from bot.board import Board
from bot.clock import Clock
from bot.delivery import DeliverySettings, OutboxDelivery
from bot.inbox import ReplyInbox
from bot.reconcile import Reconciler
from bot.registry import AgentRegistry
from bot.settings import Settings
from bot.signal import ChangeSignal, Queued
from bot.supervisor import Supervisor
from channels.slack.adapter_http import slack_routes
from channels.slack.app import build_bolt_app
from channels.slack.delivery import SlackDeliverer
from channels.slack.events import store_replies
from channels.slack.gateway import SlackGateway
from channels.slack.probe import SlackThreadProbe
from channels.slack.services import AdminCheck, SlackServices
from channels.slack.socket_mode import build_socket_client
from channels.slack.thread_status import SlackThreadStatus
from store.database import is_transient
from store.repository import SqlStore

AUTH_CHECK_SECONDS = 30.0
#: At shutdown, how long acknowledged work (thread posts waiting to be stored) may take to finish.
SHUTDOWN_DRAIN_SECONDS = 10.0


def missing_settings(settings: Settings, socket_mode: bool) -> list[str]:
    """The Slack variables this mode needs that are not set."""
    needed = {"SLACK_BOT_TOKEN": settings.slack_bot_token}
    if socket_mode:
        needed["SLACK_APP_TOKEN"] = settings.slack_app_token
    else:
        needed["SLACK_SIGNING_SECRET"] = settings.slack_signing_secret
    return [name for name, value in needed.items() if value is None or not value.get_secret_value()]


def web_client(settings: Settings) -> AsyncWebClient:
    """The Web API client. No SDK-level retries: the outbox retries durably and knows when a
    retry could post twice; listeners answer people within Slack's 3 seconds instead."""
    assert settings.slack_bot_token is not None
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=10,
        retry_handlers=[],
        # One pooled session: without it every call opens (and TLS-handshakes) a connection.
        session=aiohttp.ClientSession(),
    )


@dataclass
class SlackRuntime:
    """Everything Slack: the listeners' services, the gateway, delivery and the probe."""

    client: AsyncWebClient
    services: SlackServices
    gateway: SlackGateway
    dispatcher: OutboxDelivery
    reconciler: Reconciler
    thread_status: SlackThreadStatus
    socket: SocketModeClient | None = None
    #: Endless loops (the outbox dispatcher, the agent runner), apart from short-lived work so
    #: that draining that work never waits on them.
    loops: Supervisor = field(default_factory=Supervisor)
    _auth_checked: float = field(default=-AUTH_CHECK_SECONDS)

    def routes(self) -> list[web.RouteDef]:
        return slack_routes(self.gateway)

    async def start(self) -> None:
        self.loops.spawn(self.dispatcher.run(), name="outbox-dispatcher")
        if self.socket is not None:
            await self.socket.connect()  # type: ignore[no-untyped-call]  # untyped in slack_sdk

    async def close(self) -> None:
        """Stops taking events, finishes what was acknowledged (for a bounded time), then
        stops. What is cut off then is found again by the reconcile's thread probe."""
        if self.socket is not None:
            await self.socket.close()  # type: ignore[no-untyped-call]  # untyped in slack_sdk
        await self.loops.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_DRAIN_SECONDS):
                await self.services.supervisor.drain()
        await self.services.supervisor.close()
        if self.client.session is not None:
            await self.client.session.close()

    async def auth_ok(self) -> bool:
        """True when auth.test answered within the last half minute."""
        if time.monotonic() - self._auth_checked < AUTH_CHECK_SECONDS:
            return True
        try:
            await self.client.auth_test()
        except Exception:
            return False
        self._auth_checked = time.monotonic()
        return True


def build_slack_runtime(
    settings: Settings,
    store: SqlStore,
    board: Board,
    registry: AgentRegistry,
    clock: Clock,
    socket_mode: bool,
    signal: ChangeSignal,
    dispatch: DeliverySettings | None = None,
) -> SlackRuntime:
    """Wires the Slack adapter around the core's use cases; a commit that queues outbox rows
    (``signal``) wakes the dispatcher."""
    client = web_client(settings)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    deliverer = SlackDeliverer(client, store, board, clock)
    dispatcher = OutboxDelivery(store, deliverer, clock, worker, dispatch or DeliverySettings())
    probe = SlackThreadProbe(client, store, board, clock)
    signal.subscribe(dispatcher.wake, to=Queued.OUTBOX)
    reconciler = Reconciler(store, clock, settings.lease_policy, probe=probe, notify=signal.notify)
    supervisor = Supervisor()
    services = SlackServices(
        board=board,
        registry=registry,
        reconciler=reconciler,
        store=store,
        clock=clock,
        admins=AdminCheck(client, frozenset(settings.admins)),
        supervisor=supervisor,
        inbox=ReplyInbox(partial(store_replies, board), supervisor, is_transient=is_transient),
    )
    secret = settings.slack_signing_secret
    verifier = SignatureVerifier(secret.get_secret_value()) if secret else None
    gateway = SlackGateway(build_bolt_app(services, client), store, clock, verifier)
    runtime = SlackRuntime(
        client, services, gateway, dispatcher, reconciler, SlackThreadStatus(client)
    )
    if socket_mode:
        assert settings.slack_app_token is not None
        runtime.socket = build_socket_client(
            settings.slack_app_token.get_secret_value(), client, gateway
        )
    return runtime
