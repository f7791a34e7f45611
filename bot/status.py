"""Task statuses and the one transition table that governs them."""

from enum import StrEnum

from bot.errors import IllegalTransition


class TaskStatus(StrEnum):
    """Where a task stands on the board."""

    #: Waiting to be worked; a claimed todo task is under a lease.
    TODO = "todo"
    #: Being worked by its assignee, under a lease.
    IN_PROGRESS = "in_progress"
    #: Work is ready for a human to look at; no lease runs.
    IN_REVIEW = "in_review"
    #: Finished. Terminal, except for an explicit human reopen.
    DONE = "done"
    #: Stuck: the agent said so, or its lease lapsed on the last attempt.
    BLOCKED = "blocked"
    #: Dropped. Terminal, except for an explicit human reopen.
    CANCELED = "canceled"


#: Statuses in which a claim carries a lease that the reconcile watches.
LEASED_STATUSES = frozenset({TaskStatus.TODO, TaskStatus.IN_PROGRESS})

#: Statuses a task never leaves except through ``reopen``.
TERMINAL_STATUSES = frozenset({TaskStatus.DONE, TaskStatus.CANCELED})

#: Every status change allowed through ``update_task_status`` (and cancel).
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.TODO: frozenset(
        {TaskStatus.IN_PROGRESS, TaskStatus.IN_REVIEW, TaskStatus.DONE, TaskStatus.BLOCKED}
        | {TaskStatus.CANCELED}
    ),
    TaskStatus.IN_PROGRESS: frozenset(
        {TaskStatus.TODO, TaskStatus.IN_REVIEW, TaskStatus.DONE, TaskStatus.BLOCKED}
        | {TaskStatus.CANCELED}
    ),
    TaskStatus.IN_REVIEW: frozenset(
        {TaskStatus.IN_PROGRESS, TaskStatus.DONE, TaskStatus.BLOCKED, TaskStatus.CANCELED}
    ),
    TaskStatus.BLOCKED: frozenset({TaskStatus.TODO, TaskStatus.IN_PROGRESS, TaskStatus.CANCELED}),
    TaskStatus.DONE: frozenset(),
    TaskStatus.CANCELED: frozenset(),
}

#: ``reopen`` is the only way out of a terminal status, and it always lands on todo.
REOPEN_TARGET = TaskStatus.TODO


def parse_status(text: str) -> TaskStatus:
    """Returns the status named by ``text`` (case and dashes forgiven) or raises."""
    cleaned = text.strip().lower().replace("-", "_").replace(" ", "_")
    try:
        return TaskStatus(cleaned)
    except ValueError:
        names = ", ".join(s.value for s in TaskStatus)
        raise IllegalTransition(f"`{text}` is not a status. Use one of: {names}.") from None


def check_transition(current: TaskStatus, target: TaskStatus) -> None:
    """Raises IllegalTransition unless the table allows ``current`` to move to ``target``."""
    if target in TRANSITIONS[current]:
        return
    if current == target:
        raise IllegalTransition(f"The task is already {current}.")
    if current in TERMINAL_STATUSES:
        raise IllegalTransition(
            f"The task is {current}, which is final; reopen it first to move it to {target}."
        )
    allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing"
    raise IllegalTransition(
        f"A task that is {current} cannot move to {target}; it can move to: {allowed}."
    )


def check_reopen(current: TaskStatus) -> None:
    """Raises IllegalTransition unless ``current`` is terminal, the only state reopen applies to."""
    if current not in TERMINAL_STATUSES:
        raise IllegalTransition(
            f"Only done or canceled tasks can be reopened; this one is {current}."
        )
