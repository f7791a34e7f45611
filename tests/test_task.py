"""Task refs, actors and the stale predicate at its boundary."""

from dataclasses import replace
from datetime import timedelta

import pytest

from bot.errors import InvalidInput
from bot.status import TaskStatus
from bot.task import Actor, Task, TaskRef, is_stale
from tests.conftest import START

TTL = timedelta(seconds=600)
LEASED = Task(
    id=1,
    channel_id="C1",
    number=7,
    title="t",
    description="",
    status=TaskStatus.IN_PROGRESS,
    created_by="user:U1",
    created_at=START,
    updated_at=START,
    assignee="coder",
    claimed_by="coder",
    attempts=1,
    lease_epoch=1,
    last_progress_at=START,
)


def test_a_ref_reads_and_writes_as_channel_hash_number() -> None:
    ref = TaskRef.parse(" C123#7 ")
    assert ref == TaskRef("C123", 7)
    assert str(ref) == "C123#7"


@pytest.mark.parametrize("text", ["C123", "#7", "c123#7", "C123#x", ""])
def test_a_malformed_ref_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(InvalidInput, match="CHANNEL#NUMBER"):
        TaskRef.parse(text)


def test_actors_round_trip_through_their_stored_form() -> None:
    for actor in (Actor.user("U1"), Actor.agent("coder"), Actor.system("reconcile")):
        assert Actor.parse(str(actor)) == actor
    with pytest.raises(InvalidInput):
        Actor.parse("robot:x")


def test_a_lease_is_live_at_exactly_the_ttl_and_stale_one_microsecond_later() -> None:
    at_ttl = START + TTL
    assert not is_stale(LEASED, at_ttl, TTL)
    assert is_stale(LEASED, at_ttl + timedelta(microseconds=1), TTL)


@pytest.mark.parametrize(
    "task",
    [
        replace(LEASED, claimed_by=None),
        replace(LEASED, status=TaskStatus.IN_REVIEW),
        replace(LEASED, status=TaskStatus.BLOCKED),
    ],
    ids=["unclaimed", "in_review", "blocked"],
)
def test_only_claimed_todo_or_in_progress_tasks_can_go_stale(task: Task) -> None:
    assert not is_stale(task, START + 10 * TTL, TTL)
