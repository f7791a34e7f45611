"""Reads a stale task's thread once before the reconcile acts, to count posts Slack never sent us.

Slack's event delivery is at-least-once but can drop a backlog; a task must never be
re-dispatched for a post that exists in the thread. Reads are budgeted per tick, and a task the
probe could not read (budget spent, rate limited, an error) is left for the next tick.
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.agents import Agent
from bot.board import Board
from bot.clock import Clock
from bot.reconcile import FoundProgress
from bot.registry import AgentRegistry
from bot.task import IncomingReply, Task, ThreadMessage
from channels.slack.parsing import error_code, unescape

logger = structlog.get_logger(__name__)


def ts_time(ts: str) -> datetime:
    return datetime.fromtimestamp(float(ts), UTC)


class SlackThreadProbe:
    """Implements ``bot.reconcile.ProgressProbe`` with conversations.replies."""

    def __init__(
        self,
        client: AsyncWebClient,
        registry: AgentRegistry,
        board: Board,
        clock: Clock,
        max_reads_per_tick: int = 50,
    ) -> None:
        self._client = client
        self._registry = registry
        self._board = board
        self._clock = clock
        self._budget = max_reads_per_tick

    async def find_progress(self, tasks: Sequence[Task]) -> FoundProgress:
        agents = {a.name: a for a in await self._registry.list_agents_as_stored()}
        found: dict[int, datetime] = {}
        unchecked: set[int] = set()
        reads = 0
        for task in tasks:
            agent = agents.get(task.claimed_by or "")
            if (
                not task.thread_ts
                or agent is None
                or not (agent.slack_user_id or agent.slack_bot_id)
            ):
                continue
            if reads >= self._budget:
                unchecked.add(task.id)
                continue
            reads += 1
            latest = await self._latest_post(task, agent)
            if latest is None:
                unchecked.add(task.id)
            elif latest:
                found[task.id] = ts_time(latest)
        if found or unchecked:
            logger.info("probe.done", found=len(found), unchecked=len(unchecked), reads=reads)
        return FoundProgress(found, frozenset(unchecked))

    async def _latest_post(self, task: Task, agent: Agent) -> str | None:
        """The ts of the assignee's latest post we had not recorded; "" if none; None if unread."""
        if task.thread_ts is None or task.last_progress_at is None:
            return ""
        since = task.last_progress_at.timestamp()
        oldest = f"{since:.6f}"
        try:
            response = await self._client.conversations_replies(
                channel=task.channel_id, ts=task.thread_ts, oldest=oldest, limit=200
            )
        except SlackApiError as exc:
            logger.warning("probe.read_failed", task=str(task.ref), error=error_code(exc))
            return None
        messages = [m for m in response.get("messages") or [] if float(m["ts"]) > since]
        await self._record_people(task, [m for m in messages if _by_a_person(m, agent)])
        posts = [m for m in messages if _by(m, agent)]
        missed = []
        for post in posts:
            author = str(post.get("user") or post.get("bot_id"))
            text = unescape(str(post.get("text", "")))
            message = ThreadMessage(
                task.id, task.channel_id, str(post["ts"]), author, text, self._clock()
            )
            if await self._board.record_thread_message(message, agent=agent.name, renew=False):
                missed.append(message.ts)
        return max(missed, key=float, default="")

    async def _record_people(self, task: Task, posts: list[dict[str, Any]]) -> None:
        """Stores people's posts the events missed; each one wakes the assignee, as it would
        have on time. Posts already stored are left as they are."""
        assert task.thread_ts is not None
        replies = [
            IncomingReply(
                task.channel_id,
                task.thread_ts,
                str(m["ts"]),
                str(m["user"]),
                None,
                unescape(str(m.get("text", ""))),
            )
            for m in posts
            if m["ts"] != task.thread_ts
        ]
        if replies:
            stored = await self._board.record_thread_replies(replies)
            if stored:
                logger.info("probe.found_people_posts", task=str(task.ref), stored=len(stored))


def _by_a_person(message: dict[str, Any], assignee: Agent) -> bool:
    """A post by a user, not by a bot (this app's own posts carry its bot id) nor the assignee.
    (A registered agent posting as a user is told apart when the post is stored.)"""
    plain = not message.get("bot_id") and not message.get("subtype")
    return plain and bool(message.get("user")) and not _by(message, assignee)


def _by(message: dict[str, Any], agent: Agent) -> bool:
    ids = {agent.slack_user_id, agent.slack_bot_id} - {None}
    return bool({message.get("user"), message.get("bot_id")} & ids)
