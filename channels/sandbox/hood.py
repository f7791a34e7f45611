"""What the page's "Under the hood" panel shows of the service: leases, task events, the outbox.

Read from the service's store through the core's read port, each time the panel refreshes:
every claimed task with when its lease lapses (the reconcile then re-dispatches it, or blocks it
after the last attempt), the latest task events across tasks, and the outbox rows still to be
sent. A diagnostic view of a sandbox, so it reads more than a listener ever should; but only
of the tasks in the channels the viewing person sees, so a private channel's tasks stay in it.
"""

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.clock import Clock
from bot.outbox import OutboxRow
from bot.ports import Reader, Store
from bot.task import LeasePolicy, Task, TaskEvent

Json = dict[str, Any]
#: Tasks whose events are read, latest change first; events shown; outbox rows shown.
TASKS_READ = 20
EVENTS_SHOWN = 40
OUTBOX_SHOWN = 20


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


@dataclass
class Hood:
    """Reads the panel's view of the service."""

    store: Store
    clock: Clock
    policy: LeasePolicy
    reconcile_interval_s: float
    #: When the reconcile runs next (None: not scheduled).
    next_reconcile: Callable[[], datetime | None]

    async def read(self, channel_ids: Collection[str]) -> Json:
        """The panel for a person who sees ``channel_ids``: only those channels' tasks, their
        events, and their outbox rows and counts."""
        async with self.store.read() as reader:
            tasks = [t for t in await reader.list_tasks() if t.channel_id in channel_ids]
            recent = sorted(tasks, key=lambda t: t.updated_at, reverse=True)[:TASKS_READ]
            events = await _events(reader, recent)
            refs = {t.id: str(t.ref) for t in tasks}
            open_rows = await reader.list_open_outbox(OUTBOX_SHOWN, refs.keys())
            counts = await reader.count_outbox(refs.keys())
        return {
            "now": _iso(self.clock()),
            "lease_ttl_s": self.policy.lease_ttl.total_seconds(),
            "max_attempts": self.policy.max_dispatch_attempts,
            "reconcile_interval_s": self.reconcile_interval_s,
            "next_reconcile_at": _iso(self.next_reconcile()),
            "leases": [self._lease(t) for t in tasks if t.claimed_by is not None],
            "events": [_event(e, refs) for e in events],
            "outbox": {
                "counts": {state.value: n for state, n in counts.items()},
                "open": [_row(r, refs) for r in open_rows],
            },
        }

    def _lease(self, task: Task) -> Json:
        """A claimed task and when its lease lapses (paused while it waits for a person)."""
        lapses = (
            task.last_progress_at + self.policy.lease_ttl
            if task.leased and task.last_progress_at and not task.awaiting_input_since
            else None
        )
        return {
            "ref": str(task.ref),
            "title": task.title,
            "status": task.status.value,
            "agent": task.claimed_by,
            "epoch": task.lease_epoch,
            "attempts": task.attempts,
            "last_progress_at": _iso(task.last_progress_at),
            "lapses_at": _iso(lapses),
            "awaiting_input": task.awaiting_input_since is not None,
            "alive_at": _iso(task.alive_at),
        }


async def _events(reader: Reader, tasks: list[Task]) -> list[TaskEvent]:
    """The latest events of ``tasks``, newest first."""
    events: list[TaskEvent] = []
    for task in tasks:
        events += await reader.list_events(task.id)
    return sorted(events, key=lambda e: (e.at, e.id), reverse=True)[:EVENTS_SHOWN]


def _event(event: TaskEvent, refs: dict[int, str]) -> Json:
    return {
        "id": event.id,
        "at": _iso(event.at),
        "ref": refs.get(event.task_id, "?"),
        "kind": event.kind.value,
        "actor": str(event.actor),
        "data": event.data,
    }


def _row(row: OutboxRow, refs: dict[int, str]) -> Json:
    return {
        "id": row.id,
        "ref": refs.get(row.task_id, "?"),
        "kind": row.kind.value,
        "state": row.state.value,
        "attempts": row.attempts,
        "available_at": _iso(row.available_at),
        "last_error": row.last_error,
    }
