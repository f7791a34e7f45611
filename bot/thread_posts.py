"""What posts in a task's thread do to the task: each is stored once, a post by the agent
holding the claim renews the lease, and a person's post wakes that agent and ends its wait for
input.

Posts arrive from the platform's events (in batches, through the reply inbox), from the probe
that reads a thread before the reconcile acts, and from outbox delivery, which records the
agent posts it made.
"""

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from bot import outbox
from bot.agents import Agent
from bot.clock import Clock
from bot.ports import Store, Unit
from bot.signal import Notify, ignore
from bot.task import Actor, EventKind, IncomingReply, NewEvent, Task, ThreadMessage
from bot.work import WakeReason


@dataclass(frozen=True)
class ThreadReply:
    """A reply stored in a task's thread, and whether it renewed the lease."""

    task_id: int
    renewed: bool


def _wrote(agent: Agent, reply: IncomingReply) -> bool:
    """Whether ``agent`` is the Slack user or bot who posted ``reply``."""
    by_user = agent.slack_user_id is not None and agent.slack_user_id == reply.user_id
    return by_user or (agent.slack_bot_id is not None and agent.slack_bot_id == reply.bot_id)


def _by_holder(reply: IncomingReply, task: Task, agents: Sequence[Agent]) -> bool:
    """Whether ``reply`` was posted by the agent holding ``task``'s claim."""
    return any(a.name == task.claimed_by and _wrote(a, reply) for a in agents)


class ThreadPosts:
    """Records thread posts against a store, with an injected clock and key source."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        new_key: Callable[[], str] = outbox.new_key,
        notify: Notify = ignore,
    ) -> None:
        self._store = store
        self._clock = clock
        self._new_key = new_key
        self._notify = notify

    async def renew_lease(self, task_id: int, author: str) -> bool:
        """Counts a post by ``author`` as progress if it holds the claim; else does nothing."""
        async with self._transaction() as unit:
            return await unit.renew_lease(task_id, author, self._clock())

    async def record_thread_message(
        self, message: ThreadMessage, agent: str | None, renew: bool = True
    ) -> bool:
        """Stores a thread message once; what it means depends on who wrote it.

        ``agent`` names the author when it is a registered agent: the claim holder's post renews
        the lease (unless ``renew`` is off, for posts found late). A person's post (``agent`` is
        None) wakes the claim holder and ends any wait for input. Returns False for a message
        already stored, which is then not counted again.
        """
        async with self._transaction() as unit:
            if not await unit.record_message(message):
                return False
            now = self._clock()
            if agent is not None:
                if renew:
                    await unit.renew_lease(message.task_id, agent, now)
            else:
                await self._person_spoke(unit, message.task_id, now)
        return True

    async def record_thread_replies(self, replies: Sequence[IncomingReply]) -> list[ThreadReply]:
        """Posts seen in threads, in one transaction whatever their number.

        Each is stored once (unique on channel and ts) if its thread is a task's. Per task, a new
        post by the agent holding the claim renews the lease, and a new post by a person (anyone
        who is not a registered agent) wakes the agent and ends a wait for input. Returns what
        was stored; redeliveries and posts outside task threads are left out.
        """
        async with self._transaction() as unit:
            now = self._clock()
            stored = await self._store_new(unit, replies, now)
            if not stored:
                return []
            agents = await unit.find_agents_by_slack_ids(
                {r.user_id for r, _ in stored if r.user_id},
                {r.bot_id for r, _ in stored if r.bot_id},
            )
            holders = {i for i, (r, task) in enumerate(stored) if _by_holder(r, task, agents)}
            people = {i for i, (r, _) in enumerate(stored) if not any(_wrote(a, r) for a in agents)}
            renewed = await self._react_to_posts(
                unit, [stored[i][1] for i in holders], [stored[i][1] for i in people], now
            )
        return [
            ThreadReply(task.id, i in holders and task.id in renewed)
            for i, (_, task) in enumerate(stored)
        ]

    async def _store_new(
        self, unit: Unit, replies: Sequence[IncomingReply], now: datetime
    ) -> list[tuple[IncomingReply, Task]]:
        """Stores the ``replies`` posted in task threads; returns the ones new to the store,
        each with its task, in the order of their channel and ts."""
        threads = {(r.channel_id, r.thread_ts) for r in replies}
        by_thread = {
            (t.channel_id, t.thread_ts): t for t in await unit.get_tasks_by_threads(threads)
        }
        found = {
            (r.channel_id, r.ts): (r, by_thread[(r.channel_id, r.thread_ts)])
            for r in replies
            if (r.channel_id, r.thread_ts) in by_thread
        }
        messages = [
            ThreadMessage(task.id, r.channel_id, r.ts, r.author, r.text, now)
            for r, task in found.values()
        ]
        return [found[key] for key in sorted(await unit.record_messages(messages))]

    async def _react_to_posts(
        self, unit: Unit, held: Sequence[Task], spoken_to: Sequence[Task], now: datetime
    ) -> set[int]:
        """Renews the leases of ``held`` (their holder posted) and wakes the holders of
        ``spoken_to`` (a person posted); returns the ids of the tasks whose lease was renewed."""
        renewed = set()
        for task in sorted({t.id: t for t in held}.values(), key=lambda t: t.id):
            if task.claimed_by and await unit.renew_lease(task.id, task.claimed_by, now):
                renewed.add(task.id)
        for task_id in sorted({t.id for t in spoken_to}):
            await self._person_spoke(unit, task_id, now)
        return renewed

    async def _person_spoke(self, unit: Unit, task_id: int, now: datetime) -> None:
        """Wakes the claim holder; a wait for input ends and the lease starts afresh."""
        task = await unit.get_task_by_id(task_id)
        if task is None or task.claimed_by is None:
            return
        wakeup = (task.id, task.claimed_by, WakeReason.MESSAGE, task.lease_epoch)
        await unit.enqueue_wakeups([wakeup], now)
        if task.awaiting_input_since is None:
            return
        resumed = await unit.compare_and_set(
            task.id,
            {"lease_epoch": task.lease_epoch, "claimed_by": task.claimed_by},
            {"awaiting_input_since": None, "last_progress_at": now},
            now,
        )
        if resumed is not None:
            event = NewEvent(task.id, EventKind.RESUMED, Actor.system("thread"), now, {})
            await unit.append_events([event])
            await unit.enqueue([outbox.card_update(resumed, self._new_key())], now)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Unit]:
        """One unit of work; if it queued work, whoever waits for work is told once it commits.
        (A lease renewed by a post, the commonest write, queues none and wakes no one.)"""
        async with self._store.transaction() as unit:
            yield unit
        if unit.queued:
            self._notify(frozenset(unit.queued))
