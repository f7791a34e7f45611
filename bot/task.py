"""The task as the domain sees it: its ref, its state, its events and its thread messages."""

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from bot.errors import InvalidInput
from bot.status import LEASED_STATUSES, TaskStatus

_REF = re.compile(r"^\s*(?P<channel>[A-Z0-9]+)\s*#\s*(?P<number>\d+)\s*$")
#: The highest task number a channel can reach (the database stores it as a 32-bit integer).
MAX_TASK_NUMBER = 2**31 - 1
#: The longest channel id stored.
MAX_CHANNEL_ID = 32


def storable(text: str) -> str:
    """``text`` without NUL characters, which no database text column can hold."""
    return text.replace("\x00", "")


@dataclass(frozen=True, order=True)
class TaskRef:
    """A task's human handle: its channel and its number there, written ``C123#7``."""

    channel_id: str
    number: int

    def __post_init__(self) -> None:
        if not 1 <= self.number <= MAX_TASK_NUMBER:
            raise InvalidInput(
                f"`{self.number}` is not a task number: tasks are numbered 1 to {MAX_TASK_NUMBER}."
            )
        if len(self.channel_id) > MAX_CHANNEL_ID:
            raise InvalidInput(f"`{self.channel_id[:40]}…` is not a channel id.")

    def __str__(self) -> str:
        return f"{self.channel_id}#{self.number}"

    @classmethod
    def parse(cls, text: str) -> "TaskRef":
        """Reads ``C123#7``; raises InvalidInput naming the expected form otherwise."""
        match = _REF.match(text)
        if match is None:
            raise InvalidInput(
                f"`{text}` is not a task ref; write it as CHANNEL#NUMBER, e.g. C123#7."
            )
        return cls(match["channel"], int(match["number"]))


ActorKind = Literal["user", "agent", "system"]


@dataclass(frozen=True)
class Actor:
    """Who caused a change: a Slack user, an agent (by name) or the service itself."""

    kind: ActorKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def user(cls, user_id: str) -> "Actor":
        return cls("user", user_id)

    @classmethod
    def agent(cls, name: str) -> "Actor":
        return cls("agent", name)

    @classmethod
    def system(cls, name: str) -> "Actor":
        return cls("system", name)

    @classmethod
    def parse(cls, text: str) -> "Actor":
        """Reads the ``kind:id`` form that events store."""
        kind, _, ident = text.partition(":")
        if kind not in ("user", "agent", "system") or not ident:
            raise InvalidInput(f"`{text}` is not an actor.")
        return cls(kind, ident)  # type: ignore[arg-type]  # narrowed by the membership test above


@dataclass(frozen=True)
class LeasePolicy:
    """How long a claim may go without progress, and how many dispatches a task gets."""

    lease_ttl: timedelta
    max_dispatch_attempts: int


@dataclass(frozen=True)
class Task:
    """A task row as read; never mutated in Python, only replaced by a compare-and-set."""

    id: int
    channel_id: str
    number: int
    title: str
    description: str
    status: TaskStatus
    created_by: str
    created_at: datetime
    updated_at: datetime
    thread_ts: str | None = None
    card_ts: str | None = None
    assignee: str | None = None
    assigned_by: str | None = None
    claimed_by: str | None = None
    attempts: int = 0
    lease_epoch: int = 0
    last_progress_at: datetime | None = None
    #: While set, a built-in agent waits for a person's reply and the lease is paused.
    awaiting_input_since: datetime | None = None
    #: The last liveness heartbeat of a generating agent (not progress).
    alive_at: datetime | None = None
    #: The last lines a worker's command printed (``threadwork worker``), reported with its
    #: liveness, and the epoch of the attempt that printed them.
    output_tail: str | None = None
    output_tail_epoch: int | None = None

    @property
    def ref(self) -> TaskRef:
        return TaskRef(self.channel_id, self.number)

    @property
    def leased(self) -> bool:
        """True when a claim is held in a status the reconcile watches."""
        return self.claimed_by is not None and self.status in LEASED_STATUSES

    @property
    def current_output_tail(self) -> str | None:
        """The output tail of the current attempt (None when it printed nothing yet, or the
        tail is an earlier attempt's)."""
        return self.output_tail if self.output_tail_epoch == self.lease_epoch else None


def is_stale(task: Task, now: datetime, lease_ttl: timedelta) -> bool:
    """True when a leased task has gone strictly longer than ``lease_ttl`` without progress.

    The SQL of ``get_stale_tasks`` is the same predicate: ``last_progress_at < now - ttl``, and a
    lease paused while the agent waits for a person's answer is never stale.
    """
    if not task.leased or task.last_progress_at is None or task.awaiting_input_since:
        return False
    return task.last_progress_at < now - lease_ttl


class EventKind(StrEnum):
    """What a task event records; one event per state change."""

    CREATED = "created"
    ASSIGNED = "assigned"
    DISPATCHED = "dispatched"
    REDISPATCHED = "redispatched"
    STATUS_CHANGED = "status_changed"
    BLOCKED = "blocked"
    CANCELED = "canceled"
    REOPENED = "reopened"
    ARTIFACT_ADDED = "artifact_added"
    #: A generating agent is alive; recorded at most every 15 s, never renews the lease.
    HEARTBEAT = "heartbeat"
    AWAITING_INPUT = "awaiting_input"
    RESUMED = "resumed"
    #: The platform refused one of the task's outbox rows for good; it is parked as dead.
    OUTBOX_DEAD = "outbox_dead"
    #: An admin sent a dead outbox row again.
    OUTBOX_RETRIED = "outbox_retried"
    #: An admin dropped an outbox row: it is never sent.
    OUTBOX_DROPPED = "outbox_dropped"
    #: A person stopped the current attempt (Slack's Stop button, or the card's).
    STOPPED = "stopped"
    #: The agent's worker handed its attempt back (it was shutting down); dispatched again.
    RELEASED = "released"
    #: A built-in agent called a tool of one of its MCP tool servers; liveness, not progress.
    TOOL_CALLED = "tool_called"
    #: Some of a built-in agent's tool servers did not start for a run; said once per task.
    TOOLS_UNAVAILABLE = "tools_unavailable"


@dataclass(frozen=True)
class NewEvent:
    """An event about to be appended."""

    task_id: int
    kind: EventKind
    actor: Actor
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskEvent:
    """An appended event; its id orders the task's history."""

    id: int
    task_id: int
    kind: EventKind
    actor: Actor
    at: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class ThreadMessage:
    """A message seen in a task's thread, unique on (channel, ts)."""

    task_id: int
    channel_id: str
    ts: str
    author: str
    text: str
    at: datetime


@dataclass(frozen=True)
class IncomingReply:
    """A post seen in some thread, not yet matched to a task; its author is a user or a bot."""

    channel_id: str
    thread_ts: str
    ts: str
    user_id: str | None
    bot_id: str | None
    text: str

    @property
    def author(self) -> str:
        return self.user_id or self.bot_id or "unknown"
