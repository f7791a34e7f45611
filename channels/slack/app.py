"""The Bolt app: listeners are thin (parse, call one use case, render) and registered here."""

import logging
import re
from typing import Any

import structlog
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from channels.slack import interactive
from channels.slack.admin_command import AGENT_KEY_VIEW, handle_admin_command
from channels.slack.events import ThreadReplies, on_mention, on_session_stopped
from channels.slack.home import publish_home
from channels.slack.parsing import MemberEvent, MessageEvent, SessionStopped, SlashCommand
from channels.slack.services import SlackServices
from channels.slack.task_command import handle_task_command

logger = structlog.get_logger(__name__)


def build_bolt_app(services: SlackServices, client: AsyncWebClient) -> AsyncApp:
    """A Bolt app that answers only after its listener ran (so the work is committed first).

    Listeners stay fast; slow work (App Home) goes to the supervisor. Signatures are checked by
    the gateway in front of the app, once.
    """
    app = AsyncApp(
        client=client,
        process_before_response=True,
        request_verification_enabled=False,
        # Assistant-pane helpers (say, set_status, ...) for DM threads; threadwork has none.
        attaching_conversation_kwargs_enabled=False,
        logger=logging.getLogger("slack_bolt"),
    )
    # Thread messages are most of the traffic: the last global middleware answers them (see
    # channels.slack.events.ThreadReplies), so they never go through listener matching.
    register_events(app, services)
    register_commands(app, services)
    register_interactivity(app, services)

    @app.error
    async def on_error(error: Exception, body: dict[str, Any]) -> None:
        logger.error("slack.listener_failed", type=body.get("type"), exc_info=error)

    return app


def register_commands(app: AsyncApp, services: SlackServices) -> None:
    @app.command("/task")
    async def task(ack: AsyncAck, body: dict[str, Any]) -> None:
        reply = await handle_task_command(SlashCommand.from_body(body), services)
        await ack(text=reply, response_type="ephemeral")

    @app.command("/task-admin")
    async def task_admin(ack: AsyncAck, body: dict[str, Any]) -> None:
        reply = await handle_admin_command(SlashCommand.from_body(body), services)
        await ack(text=reply, response_type="ephemeral")


def register_events(app: AsyncApp, services: SlackServices) -> None:
    app.use(ThreadReplies(services.inbox))

    @app.event("app_mention")
    async def mention(event: dict[str, Any], client: AsyncWebClient) -> None:
        await on_mention(MessageEvent.from_event(event), services, client)

    @app.event("member_joined_channel")
    async def joined(event: dict[str, Any]) -> None:
        member = MemberEvent.from_event(event)
        if member is not None:
            services.access.membership.joined(member.user_id, member.channel_id)

    @app.event("member_left_channel")
    async def left(event: dict[str, Any]) -> None:
        member = MemberEvent.from_event(event)
        if member is not None:
            services.access.membership.left(member.user_id, member.channel_id)

    @app.event("agent_session_stopped")
    async def session_stopped(event: dict[str, Any], client: AsyncWebClient) -> None:
        await on_session_stopped(SessionStopped.from_event(event), services, client)

    @app.event("app_home_opened")
    async def home(event: dict[str, Any], client: AsyncWebClient) -> None:
        user = event.get("user")
        if event.get("tab", "home") == "home" and isinstance(user, str) and user:
            services.supervisor.spawn(publish_home(client, services, user), name=f"home:{user}")


def register_interactivity(app: AsyncApp, services: SlackServices) -> None:
    @app.action(re.compile(r"^task_(assign|cancel|stop|status_\w+)$"))
    async def card_action(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await interactive.on_card_action(body, services, client)

    @app.shortcut(interactive.CREATE_TASK_SHORTCUT)
    async def create_from_message(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient
    ) -> None:
        await ack()
        await interactive.open_create_task(body, services, client)

    @app.view(interactive.CREATE_TASK_VIEW)
    async def create_submitted(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack(**(await interactive.submit_create_task(body, services) or {}))

    @app.view(AGENT_KEY_VIEW)
    async def key_submitted(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack(**(await interactive.submit_agent_key(body, services) or {}))
