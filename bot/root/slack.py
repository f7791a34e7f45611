"""The root's Slack wiring: the client's outbox delivery, reply inbox, Bolt app and gateway
around the core, and the check that Slack's credentials are set."""

import asyncio
from dataclasses import dataclass
from functools import partial

from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

from bot.delivery import Deliverer, OutboxDelivery
from bot.inbox import ReplyInbox
from bot.pacing import SharedPace
from bot.root.core import Core, Overrides
from bot.settings import Settings
from bot.signal import Queued
from bot.supervisor import Supervisor
from bot.workers import FencedDeliverer, Liveness
from channels.slack.app import build_bolt_app
from channels.slack.client import AuthCheck, missing_settings
from channels.slack.delivery import SlackDeliverer
from channels.slack.events import store_replies
from channels.slack.gateway import SlackGateway, SlackSignature
from channels.slack.services import SlackServices
from channels.slack.socket_mode import build_socket_client
from channels.slack.stream import SlackThreadStreams
from store.database import is_transient


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


def wire_slack(
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
