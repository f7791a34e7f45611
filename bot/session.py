"""Agent sessions: the status a task thread's session shows, from one table.

Every assigned task thread is an agent session in Slack (``agents.sessions.setStatus``). Its
status is never decided on its own: it follows from the task's status and from what its assignee
is doing, by ``SESSION_TABLE``, the one mapping the session, the card and ``/task show`` all use.
The README's "Agent sessions" table is this table, and a test holds them together.
"""

from collections.abc import Mapping
from enum import StrEnum

from bot.agents import Agent
from bot.status import TaskStatus
from bot.task import Task


class SessionStatus(StrEnum):
    """What a task thread's agent session shows (Slack's four session statuses)."""

    #: The assignee is working: Slack shows a spinner and a Stop button.
    PROCESSING = "processing"
    #: Nobody works and nobody is waited for: handed back for review, or between runs.
    ACTIVE = "active"
    #: Waiting for a person: an answer to the agent's question, or a blocked task to unblock.
    SUSPENDED = "suspended"
    #: Done or canceled.
    CLOSED = "closed"


class Work(StrEnum):
    """What a task's assignee is doing, as far as the session is concerned."""

    #: Nobody holds the claim (blocked, finished, or never dispatched).
    UNCLAIMED = "unclaimed"
    #: The claim is held and the work goes on: an external agent holds the lease, or a built-in
    #: agent's run is pending or under way. A lapsed lease still counts until the reconcile acts.
    WORKING = "working"
    #: A built-in agent holds the claim but no run is pending or under way (between runs).
    IDLE = "idle"
    #: The agent asked a person and waits for the answer; the lease is paused.
    WAITING = "waiting"


_WHILE_OPEN = {
    Work.UNCLAIMED: SessionStatus.ACTIVE,
    Work.WORKING: SessionStatus.PROCESSING,
    Work.IDLE: SessionStatus.ACTIVE,
    Work.WAITING: SessionStatus.SUSPENDED,
}

#: The session status of an assigned task, by its status and what its assignee is doing.
SESSION_TABLE: dict[TaskStatus, dict[Work, SessionStatus]] = {
    TaskStatus.TODO: _WHILE_OPEN,
    TaskStatus.IN_PROGRESS: _WHILE_OPEN,
    TaskStatus.IN_REVIEW: dict.fromkeys(Work, SessionStatus.ACTIVE),
    TaskStatus.BLOCKED: dict.fromkeys(Work, SessionStatus.SUSPENDED),
    TaskStatus.DONE: dict.fromkeys(Work, SessionStatus.CLOSED),
    TaskStatus.CANCELED: dict.fromkeys(Work, SessionStatus.CLOSED),
}


def work_of(task: Task, *, built_in: bool, running: bool) -> Work:
    """What ``task``'s assignee is doing. ``running``: a run of a built-in agent is pending or
    under way for the task's current epoch (ignored for external agents, which have no runs)."""
    if task.claimed_by is None:
        return Work.UNCLAIMED
    if task.awaiting_input_since is not None:
        return Work.WAITING
    if built_in and not running:
        return Work.IDLE
    return Work.WORKING


def session_status(task: Task, *, built_in: bool, running: bool) -> SessionStatus | None:
    """The status ``task``'s session shows; None for a task never assigned (it has none)."""
    if task.assignee is None:
        return None
    return SESSION_TABLE[task.status][work_of(task, built_in=built_in, running=running)]


def session_for(task: Task, agents: Mapping[str, Agent], *, running: bool) -> SessionStatus | None:
    """``session_status`` with the assignee looked up among ``agents`` (built in or not)."""
    agent = agents.get(task.assignee or "")
    return session_status(task, built_in=agent is not None and agent.built_in, running=running)
