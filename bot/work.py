"""What agents work with: artifacts, wake-ups, token usage."""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


@dataclass(frozen=True)
class Artifact:
    """Something an agent produced for a task: a link, or stored content."""

    id: int
    task_id: int
    name: str
    kind: str
    uri: str | None
    content: str | None
    created_by: str
    created_at: datetime


class WakeReason(StrEnum):
    """Why an agent should look at a task now."""

    DIRECTIVE = "directive"
    REDISPATCH = "redispatch"
    MESSAGE = "message"
    #: A waiting agent's lease TTL passed with no answer: it should assume and go on.
    ASSUME = "assume"
    #: A person stopped the attempt: the agent must stop working on the task at once.
    STOP = "stop"


@dataclass(frozen=True)
class Wakeup:
    """A queued reason for ``agent`` to work on ``task_id`` at lease ``epoch``."""

    id: int
    task_id: int
    agent: str
    reason: WakeReason
    epoch: int
    created_at: datetime


@dataclass(frozen=True)
class Usage:
    """Tokens one model step used."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0


@dataclass(frozen=True)
class TaskUsage:
    """A task's running totals across every step of every run."""

    steps: int
    usage: Usage
