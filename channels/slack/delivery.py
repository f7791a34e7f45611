"""Outbox delivery to Slack: in order per thread, paced per channel, never doubled.

Each row is rendered from the task's state at delivery time. A 429 waits Retry-After; a 5xx or a
dropped connection backs off exponentially and marks the row uncertain, because Slack may have
posted it anyway. Before re-posting an uncertain row, the thread is searched for the row's key in
message metadata, so a crash between Slack's answer and our record never posts twice.

An error that Slack will give for this row every time (the bot is not in the channel, the channel
is archived, the blocks are invalid ...) parks the row as dead, for an admin to retry or drop. A
message Slack finds too long is sent once more, shortened, with a pointer to ``/task show``.
"""

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.agents import Agent
from bot.budget import Budget, Unmetered
from bot.clock import Clock
from bot.delivery import Delivered
from bot.outbox import OutboxKind, OutboxRow
from bot.outbox_retries import DeliveryFailed, Retry
from bot.queries import DeliveryContext, TaskQueries
from bot.session import SessionStatus, session_for
from bot.task import LeasePolicy, Task, TaskRef, ThreadMessage
from bot.thread_posts import ThreadPosts
from channels.slack import render
from channels.slack.history import HistoryPages, HistorySpent, Message, Page, Window
from channels.slack.parsing import error_code

logger = structlog.get_logger(__name__)

EVENT_TYPES = {
    OutboxKind.CARD_POST: "threadwork_card",
    OutboxKind.DIRECTIVE: "threadwork_directive",
    OutboxKind.ESCALATION: "threadwork_escalation",
    OutboxKind.AGENT_POST: "threadwork_agent_post",
    OutboxKind.NOTICE: "threadwork_notice",
}
#: setStatus errors that say this app or workspace has no agent sessions (not declared as an
#: agent, or the feature is off): sessions are left alone for a while, the card still updates.
SESSIONS_UNAVAILABLE = frozenset(
    {"feature_disabled", "missing_scope", "access_denied", "no_permission", "not_authorized"}
    | {"unknown_method", "not_allowed_token_type"}
)
#: How long sessions are left alone after Slack said they are unavailable.
SESSIONS_PAUSE = timedelta(minutes=10)
#: Stream errors that mean the message is no longer streaming: nothing left to end.
STREAM_ENDED = frozenset({"message_not_in_streaming_state", "message_not_found"})
#: How far before a row's creation to search the thread when looking for an earlier post.
LOOKBACK = timedelta(minutes=5)
#: Searches for earlier posts left unfinished (budget spent) that are kept to resume.
KEEP_LOOKUPS = 1000
#: How much of a text a shortened retry keeps, and of a card's title and description.
SHORTENED_TEXT = 3000
SHORTENED_TITLE = 150
SHORTENED_DESCRIPTION = 1000


def slack_ts(at: datetime) -> str:
    return f"{at.timestamp():.6f}"


@dataclass
class Lookup:
    """A search for an uncertain row's earlier post that the history budget cut short."""

    #: The row's attempt count when it resumes: another worker's attempt meanwhile (which may
    #: have posted it again) makes the search start over.
    attempt: int
    window: Window


class SlackDeliverer:
    """Renders one outbox row from current state and performs it against the Web API.

    ``budget`` paces the thread reads that look for an uncertain row's earlier post (None:
    unmetered, for a deliverer built by hand in a test)."""

    def __init__(
        self,
        client: AsyncWebClient,
        queries: TaskQueries,
        thread_posts: ThreadPosts,
        clock: Clock,
        budget: Budget | None = None,
    ) -> None:
        self._client = client
        self._queries = queries
        self._thread_posts = thread_posts
        self._clock = clock
        self._pages = HistoryPages(client, budget or Unmetered())
        self._lookups: dict[int, Lookup] = {}
        self._sessions = SessionSync(client, clock)

    async def deliver(self, row: OutboxRow) -> Delivered:
        """Performs ``row``; Slack's failures come out as DeliveryFailed saying how to retry."""
        try:
            return await self._deliver(row)
        except SlackApiError as exc:
            raise _classify(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"connection: {type(exc).__name__}", uncertain=True) from exc

    async def _deliver(self, row: OutboxRow) -> Delivered:
        context = await self._queries.delivery_context(row)
        if context is None:  # deleted with the database's help; nothing to render, ever
            raise DeliveryFailed("task_not_found", retry=Retry.NEVER)
        task, agents, policy = context.task, context.agents, context.policy
        if row.shortened:
            task = shortened_task(task)
        handoff = f'"{render.escape(context.handoff[:300])}"' if context.handoff else None
        if row.kind == OutboxKind.CARD_UPDATE:
            return await self._update_card(context)
        if row.kind == OutboxKind.STREAM_STOP:
            return await self._stop_stream(task, str(row.payload["ts"]))
        if row.kind != OutboxKind.CARD_POST and task.thread_ts is None:
            # Its card was never posted (dead or dropped): a post now would start a stray thread.
            raise DeliveryFailed("card_not_posted", retry=Retry.NEVER)
        if row.uncertain:
            earlier = await self._find_posted(task, row)
            if earlier is not None:
                return Delivered(earlier, recovered=True)
        return await self._post(task, row, agents, handoff, policy)

    async def _update_card(self, context: DeliveryContext) -> Delivered:
        """Re-renders the card, and first brings the thread's agent session to the status the
        task's state maps to, if that changed since the platform was last told."""
        task = context.task
        if task.card_ts is None:
            # The card's own row is dead or dropped: there is nothing to update, and once the
            # card is retried it shows the current state anyway, so this row is settled as is.
            return Delivered("", skipped=True)
        session = session_for(task, context.agents, running=context.running)
        told = await self._sessions.sync(task, context, session)
        await self._client.chat_update(
            channel=task.channel_id,
            ts=task.card_ts,
            text=render.card_text(task),
            blocks=render.card_blocks(task, context.policy, context.agents, self._clock(), session),
            link_names=False,
        )
        return Delivered(task.card_ts, session=told)

    async def _stop_stream(self, task: Task, ts: str) -> Delivered:
        """Ends a message the agent was streaming when a person pressed Stop."""
        try:
            await self._client.chat_stopStream(channel=task.channel_id, ts=ts)
        except SlackApiError as exc:
            if error_code(exc) not in STREAM_ENDED:
                raise
            return Delivered(ts, skipped=True)
        return Delivered(ts)

    async def _post(
        self,
        task: Task,
        row: OutboxRow,
        agents: dict[str, Agent],
        handoff: str | None,
        policy: LeasePolicy,
    ) -> Delivered:
        metadata = {
            "event_type": EVENT_TYPES[row.kind],
            "event_payload": {"task": str(task.ref), "outbox_key": row.key}
            | {k: row.payload[k] for k in ("epoch", "attempt", "agent") if k in row.payload},
        }
        # link_names off: a bare "@channel" in a rendered text stays text (Slack's default, pinned).
        message: dict[str, Any] = {
            "channel": task.channel_id,
            "metadata": metadata,
            "link_names": False,
        }
        if row.kind == OutboxKind.CARD_POST:
            session = session_for(task, agents, running=False)
            message |= {
                "text": render.card_text(task),
                "blocks": render.card_blocks(task, policy, agents, self._clock(), session),
                "thread_ts": task.thread_ts,
            }
        elif row.kind == OutboxKind.NOTICE:
            message |= {
                "text": render.notice_text(task, row.payload, agents),
                "thread_ts": task.thread_ts,
            }
        elif row.kind == OutboxKind.DIRECTIVE:
            message |= {
                "text": render.directive_text(task, row.payload, agents, handoff),
                "thread_ts": task.thread_ts,
            }
        elif row.kind == OutboxKind.AGENT_POST:
            return await self._agent_post(task, row, message, agents)
        else:
            message |= {
                "text": render.escalation_text(task, row.payload, agents),
                "thread_ts": task.thread_ts,
                "reply_broadcast": True,
            }
        return Delivered(await self._send(row, task, message))

    async def _agent_post(
        self, task: Task, row: OutboxRow, message: dict[str, Any], agents: dict[str, Agent]
    ) -> Delivered:
        """An agent's words, in the thread under its own name; stored as the agent's message."""
        name = row.payload["agent"]
        agent = agents.get(name)
        message |= {
            "text": render.agent_post_text(row.payload),
            "thread_ts": task.thread_ts,
            "username": agent.display_name if agent else name,
            "icon_emoji": ":robot_face:",
        }
        ts = await self._send(row, task, message)
        posted = ThreadMessage(
            task.id, task.channel_id, ts, f"agent:{name}", row.payload["text"], self._clock()
        )
        await self._thread_posts.record_thread_message(posted, agent=name, renew=False)
        return Delivered(ts)

    async def _send(self, row: OutboxRow, task: Task, message: dict[str, Any]) -> str:
        """Posts ``message`` and returns its ts; shortened once Slack found the row too long."""
        if row.shortened:
            message["text"] = shorten(message["text"], task.ref, SHORTENED_TEXT)
        response = await self._client.chat_postMessage(**message)
        return str(response["ts"])

    async def _find_posted(self, task: Task, row: OutboxRow) -> str | None:
        """The ts of an earlier post of ``row`` (found by its key in metadata), if any.

        Every page read takes a token of the history budget. With none left the row waits,
        still uncertain (DeliveryFailed, later), and the search resumes where it stopped at
        the row's next attempt: it never answers "not posted" before reading to the end.
        """
        lookup = self._lookups.pop(row.id, None)
        window = (
            lookup.window
            if lookup is not None and lookup.attempt == row.attempts
            else Window(slack_ts(row.created_at - LOOKBACK))
        )
        try:
            return await self._search(task, row, window)
        except HistorySpent as spent:
            if len(self._lookups) >= KEEP_LOOKUPS:
                self._lookups.pop(next(iter(self._lookups)))
            self._lookups[row.id] = Lookup(row.attempts + 1, window)
            raise DeliveryFailed(
                spent.reason, retry_after=spent.retry_after, uncertain=True
            ) from spent

    async def _search(self, task: Task, row: OutboxRow, window: Window) -> str | None:
        """Reads the thread (or, for a card, the channel) page by page through ``window``,
        moving it as it goes, until the row's key turns up or nothing more is there."""
        while True:
            page = await self._page(task, window)
            for message in page.messages:
                if _outbox_key(message) == row.key:
                    return str(message["ts"])
            if not page.has_more:
                return None
            moved = window.after_replies(page) if task.thread_ts else window.after_history(page)
            if not moved:  # Slack says there is more but showed nothing new: ask again later
                raise DeliveryFailed("lookup_incomplete", uncertain=True)

    async def _page(self, task: Task, window: Window) -> Page:
        if task.thread_ts:
            return await self._pages.replies(task.channel_id, task.thread_ts, window, metadata=True)
        return await self._pages.history(task.channel_id, window, metadata=True)


class SessionSync:
    """Keeps a task thread's agent session (``agents.sessions.setStatus``) at the status its
    task maps to. A call is made only when that status differs from what Slack was last told;
    the first one creates the session with the task's title, the assigner as initiator, and
    the assignee's name. If Slack says this app has no sessions, they are left alone for a
    while (logged once), and cards go on updating."""

    def __init__(self, client: AsyncWebClient, clock: Clock) -> None:
        self._client = client
        self._clock = clock
        self._paused_until: datetime | None = None
        self._warned: set[str] = set()

    async def sync(
        self, task: Task, context: DeliveryContext, session: SessionStatus | None
    ) -> SessionStatus | None:
        """Tells Slack ``session`` if it changed; returns what was told (None: nothing)."""
        if session is None or session == context.session or task.thread_ts is None:
            return None
        if self._paused_until is not None and self._clock() < self._paused_until:
            return None
        args: dict[str, Any] = {"channel_id": task.channel_id, "thread_ts": task.thread_ts}
        if context.session is None:
            agent = context.agents.get(task.assignee or "")
            args |= {
                "title": task.title[:200],
                "initiator_user_id": task.assigned_by,
                "username": agent.display_name if agent else task.assignee,
                "icon_emoji": ":robot_face:",
            }
        try:
            response = await self._client.agents_sessions_setStatus(status=session.value, **args)
        except SlackApiError as exc:
            if error_code(exc) not in SESSIONS_UNAVAILABLE:
                raise
            self._paused_until = self._clock() + SESSIONS_PAUSE
            self._warn_once("session.unavailable", error_code(exc))
            return None
        warning = response.get("warning")
        if warning:
            self._warn_once("session.warning", str(warning))
        return session

    def _warn_once(self, event: str, detail: str) -> None:
        if detail not in self._warned:
            self._warned.add(detail)
            logger.warning(event, detail=detail)


def _outbox_key(message: Message) -> object:
    payload = (message.get("metadata") or {}).get("event_payload") or {}
    return payload.get("outbox_key")


#: Errors Slack gives for this row every time, from its method references (chat.postMessage,
#: chat.update, conversations.replies/history): the channel, the message to update, the content
#: or the request itself is wrong. Retrying cannot help; the row is parked as dead.
PERMANENT_ERRORS = frozenset(
    {
        # The channel: gone, archived or frozen, or the bot is not in it.
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "is_inactive",
        "channel_type_not_supported",
        "team_not_found",
        "thread_not_found",
        # A workspace or channel rule forbids the post.
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
        "ekm_access_denied",
        "slack_connect_file_link_sharing_blocked",
        "slack_connect_canvas_sharing_blocked",
        # The content.
        "invalid_blocks",
        "invalid_blocks_format",
        "block_mismatch",
        "invalid_attachments",
        "too_many_attachments",
        "no_text",
        "markdown_text_conflict",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "metadata_too_large",
        "metadata_must_be_sent_from_app",
        # The card to update.
        "message_not_found",
        "cant_update_message",
        "edit_window_closed",
        "cant_broadcast_message",
        "no_dual_broadcast_content_update",
        # The request.
        "invalid_arguments",
        "invalid_arg_name",
        "invalid_array_arg",
        "invalid_charset",
        "invalid_form_data",
        "invalid_post_type",
        "missing_post_type",
        "as_user_not_supported",
    }
)
#: The message (or the request, HTTP 413) is too long: one more try, shortened.
TOO_LONG_ERRORS = frozenset({"msg_too_long", "msg_blocks_too_long"})
#: Slack's own trouble, after which "some aspect of the operation" may have succeeded.
UNSURE_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable"})


def _classify(exc: SlackApiError) -> DeliveryFailed:
    """429: wait Retry-After, nothing was posted. 5xx or Slack's internal errors: back off,
    unsure. Too long: once more, shortened. A permanent error: never again. Anything else (an
    auth or workspace problem, which fixing the app fixes for every row): back off."""
    status = exc.response.status_code
    error = error_code(exc)
    if status == 429:
        retry_after = float(
            exc.response.headers.get("Retry-After", exc.response.headers.get("retry-after", 1))
        )
        return DeliveryFailed("ratelimited", retry_after=retry_after, rate_limited=True)
    if status == 413 or error in TOO_LONG_ERRORS:
        return DeliveryFailed(error, retry=Retry.SHORTENED)
    if error in PERMANENT_ERRORS:
        return DeliveryFailed(error, retry=Retry.NEVER)
    return DeliveryFailed(error, uncertain=status >= 500 or error in UNSURE_ERRORS)


def shorten(text: str, ref: TaskRef, limit: int) -> str:
    """At most ``limit`` characters of ``text``, cut before a half-written ``<...>`` link or
    mention or ``&...;`` entity, ending with a pointer to the rest; short texts are unchanged."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    for opener, closer, longest in (("<", ">", 300), ("&", ";", 8)):
        start = head.rfind(opener, len(head) - longest)
        if start > head.rfind(closer):
            head = head[:start]
    return f"{head.rstrip()}… (truncated; `/task show {ref}` has the rest)"


def shortened_task(task: Task) -> Task:
    """``task`` with its title and description cut down, for a card Slack found too long."""
    return replace(
        task,
        title=shorten(task.title, task.ref, SHORTENED_TITLE),
        description=shorten(task.description, task.ref, SHORTENED_DESCRIPTION),
    )
