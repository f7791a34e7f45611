"""Reads a stale task's thread before the reconcile acts, to count posts Slack never sent us.

Slack's event delivery is at-least-once but can drop a backlog; a task must never be
re-dispatched for a post that exists in the thread. Every page read takes a token from the
thread-read budget shared by every replica (``THREADWORK_SLACK_HISTORY_PER_MINUTE``). A task
whose thread could not be read to its end (budget spent, rate limited, an error) is left
unchecked: the reconcile defers it to a later tick and never acts on a guess.

A thread with more new messages than a page holds (15 outside the Marketplace) is read a page
per token, oldest first from the task's last progress; what a tick could not finish is resumed
at the next tick from where it stopped, as long as the task has not changed meanwhile.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.agents import Agent
from bot.budget import Budget
from bot.clock import Clock
from bot.reconcile import FoundProgress
from bot.registry import AgentRegistry
from bot.task import IncomingReply, Task, ThreadMessage
from bot.thread_posts import ThreadPosts
from channels.slack.history import HistoryPages, HistorySpent, Message, Window
from channels.slack.parsing import error_code, unescape

logger = structlog.get_logger(__name__)

#: How long a thread read left unfinished is kept for a later tick to resume.
KEEP_UNFINISHED = timedelta(hours=1)
_NEVER = datetime.min.replace(tzinfo=UTC)


def ts_time(ts: str) -> datetime:
    return datetime.fromtimestamp(float(ts), UTC)


@dataclass
class ThreadRead:
    """A read of one task's thread, from its last progress, perhaps over several ticks."""

    #: The task as the read began: a renewal or a re-dispatch since makes the read start over.
    since: datetime
    epoch: int
    window: Window
    touched_at: datetime
    #: The assignee's posts read so far; recorded only once the thread is read to its end.
    posts: list[Message] = field(default_factory=list)


class SlackThreadProbe:
    """Implements ``bot.reconcile.ProgressProbe`` with budgeted conversations.replies."""

    def __init__(
        self,
        client: AsyncWebClient,
        registry: AgentRegistry,
        thread_posts: ThreadPosts,
        clock: Clock,
        budget: Budget,
    ) -> None:
        self._pages = HistoryPages(client, budget)
        self._registry = registry
        self._thread_posts = thread_posts
        self._clock = clock
        self._reads: dict[int, ThreadRead] = {}
        #: When each task's thread was last read (to its end or not), for taking turns.
        self._tried: dict[int, datetime] = {}

    async def find_progress(self, tasks: Sequence[Task]) -> FoundProgress:
        agents = {a.name: a for a in await self._registry.list_agents_as_stored()}
        now = self._clock()
        self._forget_before(now - KEEP_UNFINISHED)
        found: dict[int, datetime] = {}
        unchecked: set[int] = set()
        reads_before, wait = self._pages.reads, None
        for task, agent in self._in_turn(tasks, agents):
            latest: str | None = None
            if wait is None:
                try:
                    latest = await self._latest_post(task, agent, now)
                    self._tried[task.id] = now
                except HistorySpent as spent:  # so would every later read this tick
                    wait = spent
            if latest is None:
                unchecked.add(task.id)
            elif latest:
                found[task.id] = ts_time(latest)
        if found or unchecked:
            logger.info(
                "probe.done",
                found=len(found),
                unchecked=len(unchecked),
                reads=self._pages.reads - reads_before,
                waiting=wait.reason if wait else None,
                retry_after_s=round(wait.retry_after, 1) if wait else None,
            )
        return FoundProgress(found, frozenset(unchecked))

    def _in_turn(self, tasks: Sequence[Task], agents: dict[str, Agent]) -> list[tuple[Task, Agent]]:
        """The tasks whose thread can show their assignee's posts, least recently read first
        (else oldest first), so a thread that fails every time cannot starve the others."""
        readable = [
            (task, agent)
            for task in tasks
            if (agent := agents.get(task.claimed_by or "")) is not None and _readable(task, agent)
        ]
        return sorted(readable, key=lambda pair: self._tried.get(pair[0].id, _NEVER))

    def _forget_before(self, cutoff: datetime) -> None:
        """Drops unfinished reads and read times not touched since ``cutoff``."""
        self._reads = {i: r for i, r in self._reads.items() if r.touched_at > cutoff}
        self._tried = {i: at for i, at in self._tried.items() if at > cutoff}

    async def _latest_post(self, task: Task, agent: Agent, now: datetime) -> str | None:
        """The ts of the assignee's latest post we had not recorded; "" if none; None if the
        thread could not be read to its end (raises HistorySpent when no read may be made)."""
        assert task.thread_ts is not None
        read = self._resume(task, now)
        try:
            while True:
                page = await self._pages.replies(task.channel_id, task.thread_ts, read.window)
                new = [m for m in page.messages if float(m["ts"]) > float(read.window.oldest)]
                await self._record_people(task, [m for m in new if _by_a_person(m, agent)])
                read.posts += [m for m in new if _by(m, agent)]
                if not page.has_more:
                    break
                if not read.window.after_replies(page):
                    logger.warning(
                        "probe.read_stuck", task=str(task.ref), oldest=read.window.oldest
                    )
                    self._reads.pop(task.id, None)
                    return None
        except SlackApiError as exc:
            logger.warning("probe.read_failed", task=str(task.ref), error=error_code(exc))
            return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("probe.read_failed", task=str(task.ref), error=type(exc).__name__)
            return None
        self._reads.pop(task.id, None)
        return await self._record_posts(task, agent, read.posts)

    def _resume(self, task: Task, now: datetime) -> ThreadRead:
        """The read an earlier tick left unfinished for ``task`` as it still is, or a new one."""
        assert task.last_progress_at is not None
        read = self._reads.get(task.id)
        if read is None or (read.since, read.epoch) != (task.last_progress_at, task.lease_epoch):
            oldest = f"{task.last_progress_at.timestamp():.6f}"
            read = ThreadRead(task.last_progress_at, task.lease_epoch, Window(oldest), now)
            self._reads[task.id] = read
        read.touched_at = now
        return read

    async def _record_posts(self, task: Task, agent: Agent, posts: list[Message]) -> str:
        """Stores the assignee's posts; the ts of the latest one not stored before, or ""."""
        missed = []
        for post in posts:
            author = str(post.get("user") or post.get("bot_id"))
            text = unescape(str(post.get("text", "")))
            message = ThreadMessage(
                task.id, task.channel_id, str(post["ts"]), author, text, self._clock()
            )
            if await self._thread_posts.record_thread_message(
                message, agent=agent.name, renew=False
            ):
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
            stored = await self._thread_posts.record_thread_replies(replies)
            if stored:
                logger.info("probe.found_people_posts", task=str(task.ref), stored=len(stored))


def _readable(task: Task, agent: Agent) -> bool:
    """A task whose thread can show its assignee's posts: it has a thread, a last progress to
    read from, and an assignee Slack knows by a user or bot id."""
    has_ids = bool(agent.slack_user_id or agent.slack_bot_id)
    return bool(task.thread_ts) and task.last_progress_at is not None and has_ids


def _by_a_person(message: dict[str, Any], assignee: Agent) -> bool:
    """A post by a user, not by a bot (this app's own posts carry its bot id) nor the assignee.
    (A registered agent posting as a user is told apart when the post is stored.)"""
    plain = not message.get("bot_id") and not message.get("subtype")
    return plain and bool(message.get("user")) and not _by(message, assignee)


def _by(message: dict[str, Any], agent: Agent) -> bool:
    ids = {agent.slack_user_id, agent.slack_bot_id} - {None}
    return bool({message.get("user"), message.get("bot_id")} & ids)
