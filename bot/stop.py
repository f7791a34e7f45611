"""A person's Stop of the attempt under way, as it is written: the task blocked "stopped by"
them with its claim cleared and its epoch bumped, the agent woken to stop at once, and the
messages it was streaming ended.

Who may stop a task is checked by the use case that calls this (``Board.stop_task``).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from bot import outbox
from bot.errors import Conflict
from bot.ports import Unit
from bot.ports.tasks import TaskFields
from bot.status import TaskStatus
from bot.task import Actor, EventKind, NewEvent, Task
from bot.work import WakeReason


@dataclass(frozen=True)
class Stopped:
    """What a Stop did: the task as it now is, and whether an attempt was under way."""

    task: Task
    stopped: bool


async def stop_attempt(
    unit: Unit,
    task: Task,
    by: str,
    streams: Sequence[str],
    now: datetime,
    new_key: Callable[[], str],
) -> Task:
    """Stops the attempt on the leased ``task`` for Slack user ``by``, as a compare-and-set on
    what was read (Conflict if it changed); ``streams`` are ended. Returns the task stopped."""
    [epoch] = await unit.next_epochs(1)
    expect: TaskFields = {
        "status": task.status,
        "lease_epoch": task.lease_epoch,
        "claimed_by": task.claimed_by,
    }
    fields: TaskFields = {
        "status": TaskStatus.BLOCKED,
        "claimed_by": None,
        "lease_epoch": epoch,
        "awaiting_input_since": None,
    }
    stopped = await unit.compare_and_set(task.id, expect, fields, now)
    if stopped is None:
        raise Conflict(f"{task.ref} changed while it was being stopped; please try again.")
    await unit.append_events(_stop_events(task, by, streams, now))
    assert task.claimed_by is not None  # leased
    await unit.enqueue_wakeups([(task.id, task.claimed_by, WakeReason.STOP, epoch)], now)
    effects = [outbox.stream_stop(stopped, ts, new_key()) for ts in streams]
    effects.append(outbox.notice(stopped, outbox.Notice.STOPPED, new_key(), by=by))
    effects.append(outbox.card_update(stopped, new_key()))
    await unit.enqueue(effects, now)
    return stopped


def _stop_events(task: Task, by: str, streams: Sequence[str], now: datetime) -> list[NewEvent]:
    """The attempt stopped (which one, and the streams ended), then the task blocked."""
    note = f"stopped by <@{by}>"
    attempt = {"attempt": task.attempts, "epoch": task.lease_epoch, "agent": task.claimed_by}
    actor = Actor.user(by)
    return [
        NewEvent(task.id, EventKind.STOPPED, actor, now, attempt | {"streams": [*streams]}),
        NewEvent(
            task.id,
            EventKind.BLOCKED,
            actor,
            now,
            {"from": task.status.value, "to": TaskStatus.BLOCKED.value, "note": note},
        ),
    ]
