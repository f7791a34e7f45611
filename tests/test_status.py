"""The transition table, exhaustively: every (from, to) pair is allowed or refused readably."""

import itertools

import pytest

from bot.errors import IllegalTransition
from bot.status import TaskStatus, check_reopen, check_transition, parse_status

S = TaskStatus

#: The specification, written out by hand so a change to the table must change this too.
ALLOWED = {
    (S.TODO, S.IN_PROGRESS),
    (S.TODO, S.IN_REVIEW),
    (S.TODO, S.DONE),
    (S.TODO, S.BLOCKED),
    (S.TODO, S.CANCELED),
    (S.IN_PROGRESS, S.TODO),
    (S.IN_PROGRESS, S.IN_REVIEW),
    (S.IN_PROGRESS, S.DONE),
    (S.IN_PROGRESS, S.BLOCKED),
    (S.IN_PROGRESS, S.CANCELED),
    (S.IN_REVIEW, S.IN_PROGRESS),
    (S.IN_REVIEW, S.DONE),
    (S.IN_REVIEW, S.BLOCKED),
    (S.IN_REVIEW, S.CANCELED),
    (S.BLOCKED, S.TODO),
    (S.BLOCKED, S.IN_PROGRESS),
    (S.BLOCKED, S.CANCELED),
}

ALL_PAIRS = list(itertools.product(TaskStatus, TaskStatus))


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=lambda s: s.value)
def test_every_pair_is_either_allowed_or_refused_with_a_readable_message(
    current: TaskStatus, target: TaskStatus
) -> None:
    if (current, target) in ALLOWED:
        check_transition(current, target)
        return
    with pytest.raises(IllegalTransition) as refused:
        check_transition(current, target)
    message = refused.value.message
    assert str(target) in message or str(current) in message
    assert message.endswith(".")


def test_terminal_statuses_point_to_reopen_in_their_refusal() -> None:
    for terminal in (S.DONE, S.CANCELED):
        with pytest.raises(IllegalTransition, match="reopen it first"):
            check_transition(terminal, S.TODO)


def test_a_refusal_lists_where_the_task_can_go() -> None:
    with pytest.raises(IllegalTransition, match="can move to: canceled, in_progress, todo"):
        check_transition(S.BLOCKED, S.DONE)


@pytest.mark.parametrize("status", list(TaskStatus), ids=lambda s: s.value)
def test_only_done_and_canceled_can_be_reopened(status: TaskStatus) -> None:
    if status in (S.DONE, S.CANCELED):
        check_reopen(status)
    else:
        with pytest.raises(IllegalTransition, match="Only done or canceled"):
            check_reopen(status)


@pytest.mark.parametrize(
    ("text", "status"),
    [("todo", S.TODO), ("In-Progress", S.IN_PROGRESS), (" in review ", S.IN_REVIEW)],
)
def test_status_names_are_read_forgivingly(text: str, status: TaskStatus) -> None:
    assert parse_status(text) == status


def test_an_unknown_status_name_lists_the_real_ones() -> None:
    with pytest.raises(IllegalTransition, match="Use one of: todo, in_progress"):
        parse_status("finished")
