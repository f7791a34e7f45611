"""Events: thread messages feed the lease; a mention can turn a thread into an assigned task."""

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.request.payload_utils import is_message_event
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.budget import Budget
from bot.errors import DomainError
from bot.inbox import ReplyInbox
from bot.task import Actor, IncomingReply, Task
from bot.thread_posts import ThreadPosts
from channels.slack.parsing import MessageEvent, SessionStopped, error_code, unescape
from channels.slack.render import inert_reply
from channels.slack.services import SlackServices
from channels.slack.task_command import resolve_agent

logger = structlog.get_logger(__name__)

#: Message subtypes that are not someone saying something in the thread.
IGNORED_SUBTYPES = frozenset(
    {"message_changed", "message_deleted", "channel_join", "channel_leave", "message_replied"}
)
_ASSIGN = re.compile(r"\bassign\s+(?:this\s+)?to\s+(?P<agent><@[A-Z0-9|._-]+>|@?[\w.-]+)", re.I)
MENTION_USAGE = (
    "Say `@threadwork assign this to @agent` in a thread to make it a task for that agent."
)


def thread_reply(event: MessageEvent) -> IncomingReply | None:
    """The reply ``event`` carries, if it is someone saying something in a thread."""
    if event.subtype in IGNORED_SUBTYPES or not event.thread_ts or event.thread_ts == event.ts:
        return None
    return IncomingReply(
        event.channel_id, event.thread_ts, event.ts, event.user_id, event.bot_id, event.text
    )


class ThreadReplies(AsyncMiddleware):
    """Message events: a thread reply goes to the reply inbox, and every message is acked here.

    It runs last among Bolt's global middleware, so after Bolt's authorization and its filter
    of the app's own posts, and it answers message events itself instead of passing them on
    to listener matching. They are most of the traffic, and a listener costs each event two
    argument-injection passes (its matcher's and its own) and a run through Bolt's listener
    runner: more than the rest of the dispatch.
    """

    def __init__(self, inbox: ReplyInbox) -> None:
        self._inbox = inbox

    async def async_process(
        self,
        *,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse | None:
        if not is_message_event(req.body):
            return await next()
        reply = thread_reply(MessageEvent.from_event(req.body["event"]))
        if reply is not None:
            # Acknowledged at once, stored just after (see bot.inbox); when too many wait to be
            # stored, this waits for room, so overload pushes back on Slack.
            await self._inbox.put(reply)
        return BoltResponse(status=200, body="")


async def store_replies(thread_posts: ThreadPosts, replies: Sequence[IncomingReply]) -> None:
    """Stores a batch of thread replies; the assignee's renew its lease."""
    stored = await thread_posts.record_thread_replies(replies)
    if stored:
        renewed = sum(1 for reply in stored if reply.renewed)
        logger.info("thread.replies", received=len(replies), stored=len(stored), renewed=renewed)


async def on_mention(event: MessageEvent, services: SlackServices, client: AsyncWebClient) -> None:
    """Handles ``@threadwork assign this to @agent``: the thread becomes a task, assigned."""
    match = _ASSIGN.search(event.text)
    thread_ts = event.thread_ts or event.ts
    if match is None:
        await _tell(client, event, MENTION_USAGE)
        return
    try:
        agent = await resolve_agent(services.registry, match["agent"])
        viewer = Actor.user(event.author)
        task = await services.queries.task_in_thread(event.channel_id, thread_ts, viewer)
        if task is None:
            title = await _thread_title(client, services.history, event.channel_id, thread_ts)
            task = await _create_from_thread(services, event, thread_ts, title)
        await services.board.assign_task(
            task.ref, agent.name, event.author, in_channel=event.channel_id
        )
    except DomainError as exc:
        await _tell(client, event, f":warning: {inert_reply(exc.message)}\n{MENTION_USAGE}")


#: A task made from a thread whose first message cannot be read (or says nothing).
FALLBACK_TITLE = "Task from a thread"


async def _create_from_thread(
    services: SlackServices, event: MessageEvent, thread_ts: str, title: str
) -> Task:
    return await services.board.create_task(
        event.channel_id, title, Actor.user(event.author), thread_ts=thread_ts
    )


async def _thread_title(
    client: AsyncWebClient, history: Budget | None, channel_id: str, thread_ts: str
) -> str:
    """The first line of the thread's first message, as a title; a plain title when the
    thread-read budget has no read left (the person is not kept waiting for one)."""
    if history is not None and await history.take() is not None:
        return FALLBACK_TITLE
    try:
        response = await client.conversations_replies(channel=channel_id, ts=thread_ts, limit=1)
    except SlackApiError:
        return FALLBACK_TITLE
    messages: list[dict[str, Any]] = response.get("messages") or []
    text = unescape(str(messages[0].get("text", ""))) if messages else ""
    text = re.sub(r"<@[A-Z0-9]+(\|[^>]*)?>", "", text).strip()
    first = text.splitlines()[0].strip() if text else ""
    return (first[:120] + "…") if len(first) > 120 else (first or FALLBACK_TITLE)


async def _tell(client: AsyncWebClient, event: MessageEvent, text: str) -> None:
    """An ephemeral note to whoever mentioned the app, in the thread they used."""
    if not event.user_id:
        return
    try:
        await client.chat_postEphemeral(
            channel=event.channel_id,
            user=event.user_id,
            text=text,
            thread_ts=event.thread_ts or event.ts,
        )
    except SlackApiError as exc:
        logger.warning("mention.reply_failed", error=error_code(exc))


async def on_session_stopped(
    stop: SessionStopped | None, services: SlackServices, client: AsyncWebClient
) -> None:
    """Someone pressed Stop on a task thread's session: the attempt stops (the core decides
    whether they may); a refusal, or nothing to stop, is told to them alone."""
    if stop is None:
        logger.warning("events.malformed_session_stopped")
        return
    try:
        stopped = await services.board.stop_thread(
            stop.channel_id, stop.thread_ts, stop.user_id, stop.streams
        )
    except DomainError as exc:
        await _tell_in_thread(client, stop, f":warning: {inert_reply(exc.message)}")
        return
    if not stopped.stopped:
        await _tell_in_thread(
            client, stop, f"{stopped.task.ref} was not being worked on; there was nothing to stop."
        )


async def _tell_in_thread(client: AsyncWebClient, stop: SessionStopped, text: str) -> None:
    try:
        await client.chat_postEphemeral(
            channel=stop.channel_id, user=stop.user_id, thread_ts=stop.thread_ts, text=text
        )
    except SlackApiError as exc:
        logger.warning("events.reply_failed", error=error_code(exc))
