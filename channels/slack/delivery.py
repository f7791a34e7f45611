"""Outbox delivery to Slack: in order per thread, paced per channel, never dropped, never doubled.

Each row is rendered from the task's state at delivery time. A 429 waits Retry-After; a 5xx or a
dropped connection backs off exponentially and marks the row uncertain, because Slack may have
posted it anyway. Before re-posting an uncertain row, the thread is searched for the row's key in
message metadata, so a crash between Slack's answer and our record never posts twice.
"""

from datetime import datetime, timedelta
from typing import Any

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.agents import Agent
from bot.board import Board
from bot.clock import Clock
from bot.delivery import Delivered, DeliveryFailed
from bot.errors import NotFound
from bot.outbox import OutboxKind, OutboxRow
from bot.queries import TaskQueries
from bot.task import LeasePolicy, Task, ThreadMessage
from channels.slack import render
from channels.slack.parsing import error_code

logger = structlog.get_logger(__name__)

EVENT_TYPES = {
    OutboxKind.CARD_POST: "threadwork_card",
    OutboxKind.DIRECTIVE: "threadwork_directive",
    OutboxKind.ESCALATION: "threadwork_escalation",
    OutboxKind.AGENT_POST: "threadwork_agent_post",
}
#: How far before a row's creation to search the thread when looking for an earlier post.
LOOKBACK = timedelta(minutes=5)


def slack_ts(at: datetime) -> str:
    return f"{at.timestamp():.6f}"


class SlackDeliverer:
    """Renders one outbox row from current state and performs it against the Web API."""

    def __init__(
        self, client: AsyncWebClient, queries: TaskQueries, board: Board, clock: Clock
    ) -> None:
        self._client = client
        self._queries = queries
        self._board = board
        self._clock = clock

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
        if context is None:
            raise NotFound(f"task {row.payload['ref']} is gone")
        task, agents, policy = context.task, context.agents, context.policy
        handoff = f'"{render.escape(context.handoff[:300])}"' if context.handoff else None
        if row.kind == OutboxKind.CARD_UPDATE:
            return await self._update_card(task, agents, policy)
        if row.uncertain:
            earlier = await self._find_posted(task, row)
            if earlier is not None:
                return Delivered(earlier, recovered=True)
        return await self._post(task, row, agents, handoff, policy)

    async def _update_card(
        self, task: Task, agents: dict[str, Agent], policy: LeasePolicy
    ) -> Delivered:
        if task.card_ts is None:
            raise NotFound(f"the card of {task.ref} has not been posted")
        await self._client.chat_update(
            channel=task.channel_id,
            ts=task.card_ts,
            text=render.card_text(task),
            blocks=render.card_blocks(task, policy, agents, self._clock()),
        )
        return Delivered(task.card_ts)

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
        message: dict[str, Any] = {"channel": task.channel_id, "metadata": metadata}
        if row.kind == OutboxKind.CARD_POST:
            message |= {
                "text": render.card_text(task),
                "blocks": render.card_blocks(task, policy, agents, self._clock()),
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
        response = await self._client.chat_postMessage(**message)
        return Delivered(str(response["ts"]))

    async def _agent_post(
        self, task: Task, row: OutboxRow, message: dict[str, Any], agents: dict[str, Agent]
    ) -> Delivered:
        """An agent's words, in the thread under its own name; stored as the agent's message."""
        name = row.payload["agent"]
        agent = agents.get(name)
        message |= {
            "text": row.payload["text"],
            "thread_ts": task.thread_ts,
            "username": agent.display_name if agent else name,
            "icon_emoji": ":robot_face:",
        }
        response = await self._client.chat_postMessage(**message)
        ts = str(response["ts"])
        posted = ThreadMessage(
            task.id, task.channel_id, ts, f"agent:{name}", row.payload["text"], self._clock()
        )
        await self._board.record_thread_message(posted, agent=name, renew=False)
        return Delivered(ts)

    async def _find_posted(self, task: Task, row: OutboxRow) -> str | None:
        """The ts of an earlier post of ``row`` (found by its key in metadata), if any."""
        oldest = slack_ts(row.created_at - LOOKBACK)
        cursor: str | None = None
        for _ in range(10):
            if task.thread_ts:
                response = await self._client.conversations_replies(
                    channel=task.channel_id,
                    ts=task.thread_ts,
                    oldest=oldest,
                    include_all_metadata=True,
                    limit=200,
                    cursor=cursor,
                )
            else:
                response = await self._client.conversations_history(
                    channel=task.channel_id,
                    oldest=oldest,
                    include_all_metadata=True,
                    limit=200,
                    cursor=cursor,
                )
            for message in response.get("messages") or []:
                payload = (message.get("metadata") or {}).get("event_payload") or {}
                if payload.get("outbox_key") == row.key:
                    return str(message["ts"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                return None
        return None


def _classify(exc: SlackApiError) -> DeliveryFailed:
    """429: wait Retry-After, nothing was posted. 5xx: unsure. Other errors: retry with back-off."""
    status = exc.response.status_code
    error = error_code(exc)
    if status == 429:
        retry_after = float(
            exc.response.headers.get("Retry-After", exc.response.headers.get("retry-after", 1))
        )
        return DeliveryFailed("ratelimited", retry_after=retry_after)
    return DeliveryFailed(error, uncertain=status >= 500)
