"""Outbox messages: the chat side effects of a state change, written in the same transaction."""

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from bot.errors import IllegalTransition
from bot.task import LeasePolicy, Task


class OutboxKind(StrEnum):
    """What a delivery worker must do in the chat platform."""

    #: Post the task card; its thread becomes the task's conversation.
    CARD_POST = "card_post"
    #: Re-render the card from the task's current state.
    CARD_UPDATE = "card_update"
    #: Wake the assignee with a directive in the thread, on behalf of the assigner.
    DIRECTIVE = "directive"
    #: Tell the assigner the task is blocked and why.
    ESCALATION = "escalation"
    #: A built-in or MCP agent's message, posted in the thread under the agent's name.
    AGENT_POST = "agent_post"
    #: threadwork's own short line in the thread: whom a task waits for, or that it was stopped.
    NOTICE = "notice"
    #: Ends a message the agent was streaming when a person pressed Stop.
    STREAM_STOP = "stream_stop"


class Notice(StrEnum):
    """What a notice in the thread says."""

    #: The agent asked a question and waits for a person's answer.
    WAITING = "waiting"
    #: A person stopped the attempt; it says how to resume.
    STOPPED = "stopped"


class OutboxState(StrEnum):
    """Where an outbox row stands in delivery."""

    #: Written, waiting for a worker (possibly after a back-off).
    PENDING = "pending"
    #: Claimed by a worker until its claim expires.
    IN_FLIGHT = "in_flight"
    #: The platform accepted it; the result (e.g. the posted ts) is recorded.
    DELIVERED = "delivered"
    #: The platform refused it for good (its error is kept); it no longer holds up its thread
    #: and waits for an admin to retry or drop it.
    DEAD = "dead"
    #: An admin dropped it: it is never sent. Final.
    DROPPED = "dropped"


#: States in which a row holds up the later rows of its thread: it may still be sent.
OPEN_STATES = (OutboxState.PENDING, OutboxState.IN_FLIGHT)

#: Every move an outbox row makes. A worker claims a pending row (or re-claims one whose claim
#: expired in flight) and settles it: delivered, back to pending for a retry, or dead; claiming a
#: card update settles the later pending card updates of its card as delivered with it. An admin
#: retries a dead row (back to pending) or drops a dead or pending one.
TRANSITIONS: dict[OutboxState, frozenset[OutboxState]] = {
    OutboxState.PENDING: frozenset(
        {OutboxState.IN_FLIGHT, OutboxState.DELIVERED, OutboxState.DROPPED}
    ),
    OutboxState.IN_FLIGHT: frozenset(
        {OutboxState.IN_FLIGHT, OutboxState.DELIVERED, OutboxState.PENDING, OutboxState.DEAD}
    ),
    OutboxState.DEAD: frozenset({OutboxState.PENDING, OutboxState.DROPPED}),
    OutboxState.DELIVERED: frozenset(),
    OutboxState.DROPPED: frozenset(),
}

#: The states an admin may retry a row from (to pending) and drop it from.
RETRYABLE_STATES = frozenset({OutboxState.DEAD})
DROPPABLE_STATES = frozenset({OutboxState.DEAD, OutboxState.PENDING})

_WHY_NOT = {
    OutboxState.PENDING: "it is waiting to be sent already",
    OutboxState.IN_FLIGHT: "it is being sent right now; look again in a minute",
    OutboxState.DELIVERED: "it was delivered",
    OutboxState.DEAD: "it is dead",
    OutboxState.DROPPED: "it was dropped and is never sent",
}


def check_outbox_retry(row_id: int, state: OutboxState) -> None:
    """Raises IllegalTransition unless an admin may send row ``row_id`` again."""
    if state not in RETRYABLE_STATES:
        raise IllegalTransition(
            f"Outbox row {row_id} cannot be retried: {_WHY_NOT[state]}. Only a dead row can."
        )


def check_outbox_drop(row_id: int, state: OutboxState) -> None:
    """Raises IllegalTransition unless an admin may drop row ``row_id``."""
    if state not in DROPPABLE_STATES:
        raise IllegalTransition(
            f"Outbox row {row_id} cannot be dropped: {_WHY_NOT[state]}. Only a dead or "
            "pending row can."
        )


@dataclass(frozen=True)
class OutboxMessage:
    """A side effect about to be enqueued. ``key`` is its stable id across retries."""

    key: str
    task_id: int
    kind: OutboxKind
    payload: dict[str, Any] = field(default_factory=dict)


def new_key() -> str:
    """A fresh outbox key: time-ordered (new keys land at the end of the unique index, not on
    a random page of it) then 64 random bits; 32 hex digits."""
    return f"{time.time_ns():016x}{secrets.randbits(64):016x}"


@dataclass(frozen=True)
class OutboxRow:
    """An enqueued side effect as a worker sees it."""

    id: int
    key: str
    task_id: int
    kind: OutboxKind
    payload: dict[str, Any]
    state: OutboxState
    attempts: int
    available_at: datetime
    created_at: datetime
    claimed_by: str | None = None
    claim_expires_at: datetime | None = None
    delivered_at: datetime | None = None
    result: dict[str, Any] | None = None
    last_error: str | None = None
    #: An earlier attempt may have been delivered (a crash or a lost answer): check first.
    uncertain: bool = False
    #: The platform found it too long: send a shortened text (once; then it is dead).
    shortened: bool = False
    #: The later card updates of the same card settled when this one was claimed (their ids):
    #: this one's render shows their changes, so they are never sent. Not a column.
    coalesced: tuple[int, ...] = ()

    @property
    def ref(self) -> str:
        """The ref of the task the row belongs to, as written in its payload."""
        return str(self.payload.get("ref", ""))


def card_post(task: Task, key: str) -> OutboxMessage:
    """Posts the task's card; when the task was made from a thread, the card goes there."""
    return OutboxMessage(key, task.id, OutboxKind.CARD_POST, {"ref": str(task.ref)})


def card_update(task: Task, key: str) -> OutboxMessage:
    """Re-renders the card from the task's state at delivery time."""
    return OutboxMessage(key, task.id, OutboxKind.CARD_UPDATE, {"ref": str(task.ref)})


def directive(
    task: Task, policy: LeasePolicy, key: str, *, redispatch: bool, released: bool = False
) -> OutboxMessage:
    """Wakes ``task``'s assignee for its current attempt, on behalf of whoever assigned it;
    ``released``: dispatched again because the agent's worker handed the attempt back."""
    payload = {
        "ref": str(task.ref),
        "agent": task.assignee,
        "on_behalf_of": task.assigned_by,
        "attempt": task.attempts,
        "max_attempts": policy.max_dispatch_attempts,
        "epoch": task.lease_epoch,
        "lease_ttl_s": int(policy.lease_ttl.total_seconds()),
        "status": task.status.value,
        "redispatch": redispatch,
    }
    if released:
        payload["released"] = True
    return OutboxMessage(key, task.id, OutboxKind.DIRECTIVE, payload)


def escalation(task: Task, reason: str, key: str) -> OutboxMessage:
    """Tells the assigner that ``task`` is blocked, and why."""
    payload = {
        "ref": str(task.ref),
        "agent": task.assignee,
        "assigned_by": task.assigned_by,
        "attempts": task.attempts,
        "reason": reason,
    }
    return OutboxMessage(key, task.id, OutboxKind.ESCALATION, payload)


def notice(task: Task, what: Notice, key: str, **data: object) -> OutboxMessage:
    """A line from threadwork in ``task``'s thread; ``data`` fills it in (who, the question)."""
    payload = {
        "ref": str(task.ref),
        "notice": what.value,
        "agent": task.assignee,
        "assigned_by": task.assigned_by,
    } | data
    return OutboxMessage(key, task.id, OutboxKind.NOTICE, payload)


def stream_stop(task: Task, ts: str, key: str) -> OutboxMessage:
    """Ends the stream of message ``ts`` in ``task``'s thread, if it is still streaming."""
    return OutboxMessage(key, task.id, OutboxKind.STREAM_STOP, {"ref": str(task.ref), "ts": ts})
