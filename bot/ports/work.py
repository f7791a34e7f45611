"""What agents do on tasks: wake-ups and read cursors, artifacts, token usage, sessions."""

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Protocol

from bot.session import SessionStatus
from bot.work import Artifact, TaskUsage, Usage, WakeReason, Wakeup


class WorkReads(Protocol):
    """What agents produced on tasks: artifacts, read cursors, token usage."""

    async def list_artifacts(self, task_id: int) -> list[Artifact]: ...

    async def count_artifacts(self, task_id: int) -> int: ...

    async def get_artifact(self, artifact_id: int) -> Artifact | None: ...

    async def get_cursor(self, agent: str, task_id: int) -> str | None: ...

    async def get_usage(self, task_id: int) -> TaskUsage | None: ...

    async def run_pending(self, task_id: int, epoch: int) -> bool:
        """Whether a wake-up of the task at ``epoch`` is not done yet: a built-in agent's run
        is pending or under way (the runner holds the wake-up that started a run until it ends)."""
        ...

    async def get_session(self, task_id: int) -> SessionStatus | None:
        """The status the platform was last told for the task's agent session (None: none yet)."""
        ...


class WakeupWrites(Protocol):
    """Agent wake-ups and read cursors."""

    async def enqueue_wakeups(
        self, wakeups: Sequence[tuple[int, str, WakeReason, int]], at: datetime
    ) -> None:
        """Queues (task id, agent, reason, epoch) wake-ups."""
        ...

    async def claim_wakeups(
        self, worker: str, agent_names: Sequence[str], limit: int
    ) -> list[Wakeup]:
        """Claims unclaimed open wake-ups of the given agents; they stay held by ``worker``
        (for as long as it lives) until finished or released."""
        ...

    async def finish_wakeups(self, ids: Sequence[int], at: datetime) -> None: ...

    async def wakeup_task(self, wakeup_id: int) -> int | None:
        """The id of the task wake-up ``wakeup_id`` is for (None if it is gone)."""
        ...

    async def release_wakeups(self, ids: Sequence[int], worker: str) -> None:
        """Makes wake-ups ``worker`` holds claimable again, unfinished."""
        ...

    async def consume_wakeups(
        self, agent: str, at: datetime, reasons: Collection[WakeReason] | None = None
    ) -> list[Wakeup]:
        """Takes the open wake-ups of ``agent`` (all, or only those for ``reasons``)."""
        ...

    async def advance_cursor(self, agent: str, task_id: int, last_ts: str) -> None: ...


class WorkWrites(Protocol):
    """What agents produce on tasks: artifacts and token usage."""

    async def insert_artifact(
        self,
        task_id: int,
        name: str,
        kind: str,
        uri: str | None,
        content: str | None,
        by: str,
        at: datetime,
    ) -> Artifact: ...

    async def add_usage(self, task_id: int, usage: Usage, at: datetime) -> None: ...

    async def record_session(
        self, task_id: int, status: SessionStatus, at: datetime, *, create: bool = True
    ) -> None:
        """Records the status the task's agent session shows (what it was told, or, after a
        person pressed Stop on it, what the platform left it in). With ``create`` off, only a
        session already created is updated: a session is created once, by the call that gives
        it its title (``agents.sessions.setStatus``), never by what else moved its status."""
        ...
