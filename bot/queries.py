"""What people and adapters read about tasks, answered by the core with typed results.

Each query is one read transaction and returns plain frozen data that a front door renders
(Slack replies, App Home, the CLI's tables and JSON). Adapters never open the store themselves.
Every query a person makes names its ``viewer``, and shows only tasks the viewer may read
(``bot.access``); a task they may not read is answered as a missing one. The CLI reads as the
system.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.access import Access
from bot.agents import Agent
from bot.clock import Clock
from bot.guards import require_task
from bot.outbox import OutboxKind, OutboxRow
from bot.policy import PolicyBook, load_policy_book
from bot.ports import Reader, Store
from bot.session import SessionStatus, session_for
from bot.status import TaskStatus
from bot.task import Actor, LeasePolicy, Task, TaskEvent, TaskRef, ThreadMessage
from bot.work import Artifact, TaskUsage

#: How far back a viewer's board shows finished (done or canceled) tasks.
FINISHED_WINDOW = timedelta(days=7)
#: Tasks per group that a viewer's board reads, at most.
BOARD_LIMIT = 100

Agents = dict[str, Agent]


@dataclass(frozen=True)
class TaskDetail:
    """One task with everything said and made about it (``/task show``, ``tasks show``)."""

    task: Task
    policy: LeasePolicy
    agents: Agents
    events: list[TaskEvent]
    messages: list[ThreadMessage]
    artifacts: list[Artifact]
    usage: TaskUsage | None
    now: datetime
    #: A built-in agent's run is pending or under way for the task's epoch.
    running: bool = False

    @property
    def session(self) -> SessionStatus | None:
        """The status the task's agent session shows (``bot.session``)."""
        return session_for(self.task, self.agents, running=self.running)


@dataclass(frozen=True)
class TaskLog:
    """A task's history (``/task log``)."""

    task: Task
    events: list[TaskEvent]
    agents: Agents


@dataclass(frozen=True)
class TaskList:
    """Tasks in one channel, optionally in one status (``/task list``)."""

    tasks: list[Task]
    status: TaskStatus | None
    agents: Agents
    now: datetime


@dataclass(frozen=True)
class ViewerBoard:
    """A person's board: tasks they assigned or created and tasks in their channels."""

    tasks: list[Task]
    policies: PolicyBook
    agents: Agents
    now: datetime


@dataclass(frozen=True)
class BoardStats:
    """Counts for admins (``/task-admin stats``)."""

    by_status: dict[str, int]
    #: Leased tasks with no progress for their channel's TTL.
    stale: int
    #: Outbox rows still to be sent.
    outbox_backlog: int
    #: Outbox rows refused for good (``/task-admin outbox`` lists them).
    outbox_dead: int = 0

    @property
    def blocked(self) -> int:
        return self.by_status.get(TaskStatus.BLOCKED.value, 0)


@dataclass(frozen=True)
class DeliveryContext:
    """What rendering an outbox row needs, read at delivery time."""

    task: Task
    policy: LeasePolicy
    agents: Agents
    #: The assignee's last words in the thread, for a re-dispatch's handoff.
    handoff: str | None
    #: A built-in agent's run is pending or under way for the task's epoch (card renders only).
    running: bool = False
    #: What the task's agent session was last told (card updates only).
    session: SessionStatus | None = None


#: How long delivery keeps the agents and channel policies it renders with, at most, when no
#: change was announced (a backstop: changes are announced as ``Queued.DIRECTORY``).
DIRECTORY_MAX_AGE = 30.0


class TaskQueries:
    """The read side of the board, over one store, with the injected clock."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        policy: LeasePolicy,
        access: Access,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._access = access
        self._monotonic = monotonic
        #: The agents and channel policies every row is rendered with, and when they were read.
        self._directory: tuple[float, Agents, PolicyBook] | None = None

    def forget_directory(self) -> None:
        """Agents or channel policies changed (``Queued.DIRECTORY``): read them again."""
        self._directory = None

    async def _rendering_directory(self, reader: Reader) -> tuple[Agents, PolicyBook]:
        """The agents and channel policies, kept between rows until a change is announced
        (in this process, or on PostgreSQL in any) or DIRECTORY_MAX_AGE passes."""
        kept = self._directory
        if kept is None or self._monotonic() - kept[0] > DIRECTORY_MAX_AGE:
            read_at = self._monotonic()
            kept = (read_at, await _agents(reader), await load_policy_book(reader, self._policy))
            self._directory = kept
        return kept[1], kept[2]

    async def _readable(self, ref: TaskRef, viewer: Actor) -> Task:
        """The task ``ref`` names if ``viewer`` may read it, else NotFound as for a missing
        task. The access check may ask the chat platform, so no transaction is open then."""
        async with self._store.read() as reader:
            task = await require_task(reader, ref)
        await self._access.require_read(viewer, task)
        return task

    async def task_detail(self, ref: TaskRef, viewer: Actor) -> TaskDetail:
        """The task ``ref`` names with its events, messages, artifacts and usage."""
        await self._readable(ref, viewer)
        async with self._store.read() as reader:
            task = await require_task(reader, ref)
            book = await load_policy_book(reader, self._policy)
            return TaskDetail(
                task=task,
                policy=book.for_channel(task.channel_id),
                agents=await _agents(reader),
                events=await reader.list_events(task.id),
                messages=await reader.list_messages(task.id),
                artifacts=await reader.list_artifacts(task.id),
                usage=await reader.get_usage(task.id),
                now=self._clock(),
                running=await reader.run_pending(task.id, task.lease_epoch),
            )

    async def task_log(self, ref: TaskRef, viewer: Actor) -> TaskLog:
        """The history of the task ``ref`` names."""
        await self._readable(ref, viewer)
        async with self._store.read() as reader:
            task = await require_task(reader, ref)
            return TaskLog(task, await reader.list_events(task.id), await _agents(reader))

    async def list_tasks(
        self, viewer: Actor, status: TaskStatus | None = None, channel_id: str | None = None
    ) -> TaskList:
        """Tasks the viewer may read, newest first, in one channel and one status when given."""
        async with self._store.read() as reader:
            tasks = await reader.list_tasks(status=status, channel_id=channel_id)
            agents = await _agents(reader)
        readable = {
            c for c in {t.channel_id for t in tasks} if await self._access.may_read(viewer, c)
        }
        shown = [t for t in tasks if t.channel_id in readable]
        return TaskList(shown, status, agents, self._clock())

    async def viewer_board(self, user_id: str, channel_ids: Sequence[str]) -> ViewerBoard:
        """``user_id``'s board: open tasks, then those finished in the last week, in
        ``channel_ids`` (the channels the platform lists for them) or created or assigned by
        them, each shown only while they may read it (``bot.access``): a task in a channel
        they have left is not shown."""
        now = self._clock()
        async with self._store.read() as reader:
            tasks = await reader.list_tasks_for_viewer(
                user_id, channel_ids, now - FINISHED_WINDOW, limit=BOARD_LIMIT
            )
            book = await load_policy_book(reader, self._policy)
            agents = await _agents(reader)
        viewer = Actor.user(user_id)
        readable = {
            c for c in {t.channel_id for t in tasks} if await self._access.may_read(viewer, c)
        }
        return ViewerBoard([t for t in tasks if t.channel_id in readable], book, agents, now)

    async def board_stats(self) -> BoardStats:
        """Tasks by status, stale leases (each channel by its own TTL), outbox backlog."""
        async with self._store.read() as reader:
            book = await load_policy_book(reader, self._policy)
            counts = await reader.board_stats()
            stale = await reader.count_stale_tasks(*book.stale_cutoffs(self._clock()))
        return BoardStats(
            counts["by_status"], stale, counts["outbox_backlog"], counts["outbox_dead"]
        )

    async def task_in_thread(self, channel_id: str, thread_ts: str, viewer: Actor) -> Task | None:
        """The task living in the thread, if any the viewer may read."""
        async with self._store.read() as reader:
            task = await reader.get_task_by_thread(channel_id, thread_ts)
        if task is None or not await self._access.may_read(viewer, task.channel_id):
            return None
        return task

    async def delivery_context(self, row: OutboxRow) -> DeliveryContext | None:
        """The current state an outbox row is rendered from; None when its task is gone."""
        async with self._store.read() as reader:
            task = await reader.get_task(TaskRef.parse(str(row.payload["ref"])))
            if task is None:
                return None
            agents, book = await self._rendering_directory(reader)
            handoff = (
                await _last_words(reader, task, agents) if row.payload.get("redispatch") else None
            )
            updates = row.kind == OutboxKind.CARD_UPDATE
            running = updates and await reader.run_pending(task.id, task.lease_epoch)
            session = await reader.get_session(task.id) if updates else None
        policy = book.for_channel(task.channel_id)
        return DeliveryContext(task, policy, agents, handoff, running, session)


async def _agents(reader: Reader) -> Agents:
    return {a.name: a for a in await reader.list_agents()}


async def _last_words(reader: Reader, task: Task, agents: Agents) -> str | None:
    """The assignee's last message in the task's thread, if it wrote any."""
    agent = agents.get(task.assignee or "")
    if agent is None:
        return None
    ids = {agent.slack_user_id, agent.slack_bot_id, f"agent:{agent.name}"} - {None}
    mine = [m for m in await reader.list_messages(task.id) if m.author in ids]
    return mine[-1].text if mine else None
