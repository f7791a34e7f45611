"""Tasks: their reads, their compare-and-set writes with their events, and channels'
lease policies."""

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Protocol, TypedDict

from bot.policy import ChannelPolicy
from bot.status import TaskStatus
from bot.task import NewEvent, Task, TaskEvent, TaskRef


class TaskFields(TypedDict, total=False):
    """Columns of a task that a compare-and-set may test or write."""

    status: TaskStatus
    assignee: str | None
    assigned_by: str | None
    claimed_by: str | None
    attempts: int
    lease_epoch: int
    last_progress_at: datetime | None
    thread_ts: str | None
    awaiting_input_since: datetime | None
    alive_at: datetime | None


class NewTask(TypedDict):
    """What creating a task needs; the store assigns the id and the channel number."""

    channel_id: str
    title: str
    description: str
    created_by: str
    thread_ts: str | None
    at: datetime


class BoardStats(TypedDict):
    """Counts for the admin's ``stats``."""

    by_status: dict[str, int]
    #: Outbox rows still to be sent (pending or in flight).
    outbox_backlog: int
    #: Outbox rows the platform refused for good, waiting for an admin.
    outbox_dead: int


class TaskReads(Protocol):
    """Tasks and their event logs."""

    async def get_task(self, ref: TaskRef) -> Task | None: ...

    async def get_task_by_id(self, task_id: int) -> Task | None: ...

    async def get_tasks_by_ids(self, task_ids: Collection[int]) -> list[Task]: ...

    async def get_task_by_thread(self, channel_id: str, thread_ts: str) -> Task | None: ...

    async def get_tasks_by_threads(self, threads: Collection[tuple[str, str]]) -> list[Task]:
        """The tasks living in the given (channel, thread_ts) threads."""
        ...

    async def list_tasks(
        self, *, status: TaskStatus | None = None, channel_id: str | None = None
    ) -> list[Task]: ...

    async def list_tasks_for_viewer(
        self, user_id: str, channel_ids: Sequence[str], finished_since: datetime, limit: int
    ) -> list[Task]:
        """Tasks assigned or created by ``user_id`` or in ``channel_ids``: up to ``limit`` open
        ones, then up to ``limit`` done or canceled since ``finished_since``; latest change
        first in each."""
        ...

    async def list_tasks_claimed_by(self, agent: str) -> list[Task]: ...

    async def get_stale_tasks(self, cutoff: datetime, limit: int) -> list[Task]:
        """Leased tasks whose last progress is strictly before ``cutoff``, oldest first."""
        ...

    async def count_stale_tasks(
        self, cutoff: datetime, channel_cutoffs: Mapping[str, datetime] | None = None
    ) -> int:
        """Leased tasks with no progress since ``cutoff``, or since the channel's own cutoff
        for the channels in ``channel_cutoffs``; a task waiting for input is not stale."""
        ...

    async def list_waiting_tasks(self, cutoff: datetime) -> list[Task]: ...

    async def board_stats(self) -> BoardStats: ...

    async def list_events(self, task_id: int) -> list[TaskEvent]: ...


class PolicyReads(Protocol):
    """Channels' overrides of the lease policy."""

    async def list_channel_policies(self) -> list[ChannelPolicy]: ...


class TaskWrites(Protocol):
    """Task changes, each a compare-and-set, with their events and channel policies."""

    async def insert_task(self, new: NewTask) -> Task: ...

    async def compare_and_set(
        self, task_id: int, expect: TaskFields, changes: TaskFields, at: datetime
    ) -> Task | None:
        """Writes ``changes`` only if every column in ``expect`` still holds; else None."""
        ...

    async def renew_lease(self, task_id: int, agent: str, at: datetime) -> bool:
        """Moves last_progress_at to ``at`` only while ``agent`` holds the claim."""
        ...

    async def next_epochs(self, count: int) -> list[int]:
        """``count`` fresh lease epochs, unique across every task ever dispatched."""
        ...

    async def redispatch_stale(
        self, tasks: Sequence[Task], cutoff: datetime, at: datetime
    ) -> list[Task]:
        """Re-dispatches those of ``tasks`` unchanged since read and still stale; returns them."""
        ...

    async def block_stale(
        self, tasks: Sequence[Task], cutoff: datetime, at: datetime
    ) -> list[Task]:
        """Blocks those of ``tasks`` unchanged since read and still stale; returns them."""
        ...

    async def set_alive(self, task_id: int, agent: str, epoch: int, at: datetime) -> bool: ...

    async def record_output_tail(
        self, task_id: int, agent: str, epoch: int, tail: str, at: datetime
    ) -> Task | None:
        """Liveness with the attempt's output tail, while ``agent`` holds the claim at
        ``epoch`` (not progress: the lease is untouched); the task as written, else None."""
        ...

    async def append_events(self, events: Sequence[NewEvent]) -> None: ...

    async def record_card(self, task_id: int, card_ts: str) -> None:
        """Records where the card was posted; a card posted in a channel starts the thread."""
        ...

    async def set_channel_policy(self, policy: ChannelPolicy, by: str, at: datetime) -> None: ...
