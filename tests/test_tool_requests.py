"""Idempotency keys on the agent tools that change things, on both backends: a call sent again
with its key returns the first call's outcome and changes nothing; a key names one call."""

import asyncio
from typing import Any

import pytest
import structlog
from sqlalchemy import text

from bot.outbox import OutboxKind
from bot.ports.tasks import TaskFields
from bot.root import Core
from bot.status import TaskStatus
from bot.task import Actor, EventKind, Task
from bot.tool_requests import KEPT_FOR, tool_request
from bot.tools import Done, Refusal, Refused, TaskTools, ToolResult
from scheduler.jobs import prune_tool_requests_job
from tests.conftest import FakeClock

ALICE = "U_ALICE"
KEY = "4f1c2a9e-call-1"


@pytest.fixture
async def task(core: Core) -> Task:
    await core.registry.add_agent("coder")
    await core.registry.add_agent("reviewer")
    return await assigned(core, "coder", "Fix the flaky test")


async def assigned(core: Core, agent: str, title: str) -> Task:
    created = await core.board.create_task("C1", title, Actor.user(ALICE))
    return await core.board.assign_task(created.ref, agent, ALICE)


def tools(core: Core, agent: str = "coder") -> TaskTools:
    """The tool set as the MCP endpoint builds it for ``agent``'s token."""
    return core.tools_for(agent)


def done(result: ToolResult) -> dict[str, Any]:
    assert isinstance(result, Done), result
    return result.data


def refused(result: ToolResult) -> Refused:
    assert isinstance(result, Refused), result
    return result


async def posts(core: Core, task: Task) -> list[str]:
    """The texts of the agent posts queued for the task's thread."""
    rows = await core.store.list_outbox(task.id)
    return [str(r.payload["text"]) for r in rows if r.kind == OutboxKind.AGENT_POST]


async def kinds(core: Core, task: Task) -> list[EventKind]:
    async with core.store.read() as reader:
        return [e.kind for e in await reader.list_events(task.id)]


async def current(core: Core, task: Task) -> Task:
    async with core.store.read() as reader:
        found = await reader.get_task_by_id(task.id)
    assert found is not None
    return found


async def post(core: Core, task: Task, text: str, key: str | None, agent: str = "coder") -> Any:
    return await tools(core, agent).post_update(str(task.ref), text, task.lease_epoch, key)


async def test_a_post_sent_again_with_its_key_is_posted_once_and_answered_the_same(
    core: Core, task: Task, clock: FakeClock
) -> None:
    first = done(await post(core, task, "Tests pass", KEY))
    posted_at = clock.now
    clock.advance(5)  # the answer was lost; the worker sends the call again
    again = done(await post(core, task, "Tests pass", KEY))

    assert again == first
    assert await posts(core, task) == ["Tests pass"]
    assert (await current(core, task)).last_progress_at == posted_at  # renewed once


async def test_without_a_key_the_same_post_twice_is_posted_twice(core: Core, task: Task) -> None:
    done(await post(core, task, "Tests pass", None))
    done(await post(core, task, "Tests pass", None))
    assert await posts(core, task) == ["Tests pass", "Tests pass"]


async def test_a_status_move_sent_again_is_not_refused_as_an_illegal_transition(
    core: Core, task: Task
) -> None:
    ref, epoch = str(task.ref), task.lease_epoch
    first = done(await tools(core).update_task_status(ref, "in_review", "PR #7", epoch, KEY))
    again = done(await tools(core).update_task_status(ref, "in_review", "PR #7", epoch, KEY))
    without_key = await tools(core).update_task_status(ref, "in_review", "PR #7", epoch)

    assert again == first
    assert first["status"] == TaskStatus.IN_REVIEW
    assert (await kinds(core, task)).count(EventKind.STATUS_CHANGED) == 1
    assert refused(without_key).reason == Refusal.NOT_ALLOWED  # a new move would be illegal


async def test_a_block_sent_again_after_the_claim_was_cleared_still_answers_the_first_move(
    core: Core, task: Task
) -> None:
    ref, epoch = str(task.ref), task.lease_epoch
    note = "exit code 1"
    first = done(await tools(core).update_task_status(ref, "blocked", note, epoch, KEY))
    again = done(await tools(core).update_task_status(ref, "blocked", note, epoch, KEY))

    assert again == first
    assert (await kinds(core, task)).count(EventKind.BLOCKED) == 1


async def test_an_artifact_sent_again_is_recorded_and_announced_once(
    core: Core, task: Task
) -> None:
    def add() -> Any:
        return tools(core).add_artifact(
            str(task.ref),
            "output tail",
            "log",
            content="boom",
            epoch=task.lease_epoch,
            idempotency_key=KEY,
        )

    first = done(await add())
    again = done(await add())

    assert again == first
    async with core.store.read() as reader:
        assert [a.id for a in await reader.list_artifacts(task.id)] == [first["artifact_id"]]
    assert (await kinds(core, task)).count(EventKind.ARTIFACT_ADDED) == 1
    assert len(await posts(core, task)) == 1


async def test_a_release_sent_again_releases_once_and_answers_with_the_new_epoch(
    core: Core, task: Task
) -> None:
    first = done(await tools(core).release_task(str(task.ref), task.lease_epoch, KEY))
    again = done(await tools(core).release_task(str(task.ref), task.lease_epoch, KEY))

    assert again == first
    assert first["epoch"] > task.lease_epoch
    assert (await kinds(core, task)).count(EventKind.RELEASED) == 1
    assert (await current(core, task)).lease_epoch == first["epoch"]


async def test_a_key_sent_with_another_tool_is_refused_and_nothing_changes(
    core: Core, task: Task
) -> None:
    done(await post(core, task, "Tests pass", KEY))
    events = await kinds(core, task)

    result = refused(
        await tools(core).add_artifact(
            str(task.ref), "log", "log", content="x", epoch=task.lease_epoch, idempotency_key=KEY
        )
    )

    assert result.reason == Refusal.INVALID
    assert "already used for post_update" in result.message
    async with core.store.read() as reader:
        assert await reader.list_artifacts(task.id) == []
    assert await kinds(core, task) == events
    assert await posts(core, task) == ["Tests pass"]


async def test_a_key_sent_with_other_arguments_is_refused_and_nothing_is_posted(
    core: Core, task: Task
) -> None:
    done(await post(core, task, "Tests pass", KEY))
    other = refused(await post(core, task, "Tests fail", KEY))
    assert other.reason == Refusal.INVALID
    assert "other arguments" in other.message
    assert await posts(core, task) == ["Tests pass"]


async def test_another_agent_may_use_the_same_key_for_its_own_call(core: Core, task: Task) -> None:
    theirs = await assigned(core, "reviewer", "Review the fix")
    done(await post(core, task, "coder here", KEY))
    done(await post(core, theirs, "reviewer here", KEY, agent="reviewer"))

    assert await posts(core, task) == ["coder here"]
    assert await posts(core, theirs) == ["reviewer here"]


@pytest.mark.parametrize("key", ["", "   ", "k" * 201, "line\nbreak"])
async def test_a_malformed_key_is_refused_before_anything_is_written(
    core: Core, task: Task, key: str
) -> None:
    result = refused(await post(core, task, "Tests pass", key))
    assert result.reason == Refusal.INVALID
    assert "idempotency_key" in result.message
    assert await posts(core, task) == []


async def test_a_refused_call_does_not_use_up_its_key(core: Core, task: Task) -> None:
    """A refusal changed nothing, so its key is not recorded: sent again once the cause is
    gone (here: the right epoch), the call is made."""
    stale = refused(await tools(core).post_update(str(task.ref), "hi", task.lease_epoch + 99, KEY))
    assert stale.reason == Refusal.SUPERSEDED
    done(await post(core, task, "hi", KEY))
    assert await posts(core, task) == ["hi"]


async def test_concurrent_calls_with_one_key_post_once_and_all_get_the_answer(
    core: Core, task: Task
) -> None:
    async with asyncio.timeout(20):
        results = await asyncio.gather(*(post(core, task, "once", KEY) for _ in range(5)))
    answers = [done(r) for r in results]
    assert all(a == answers[0] for a in answers)
    assert await posts(core, task) == ["once"]


async def test_a_call_waiting_on_a_key_held_by_an_open_transaction_replays_it_once_committed(
    core: Core, task: Task, clock: FakeClock
) -> None:
    """The loser of a race for a key: recording it waits for the holder's transaction (on
    PostgreSQL at the key's row; on SQLite at the one writer's lock), then returns what the
    holder recorded, posting nothing of its own."""
    request = tool_request(
        KEY, "post_update", task=str(task.ref), text="raced", epoch=task.lease_epoch
    )
    assert request is not None
    async with core.store.transaction() as holder:
        recorded = await holder.record_tool_request(
            "coder", KEY, request.tool, request.digest, task.id, clock.now
        )
        assert recorded
        await holder.record_tool_result("coder", KEY, {"epoch": task.lease_epoch})
        loser = asyncio.create_task(post(core, task, "raced", KEY))
        await waiting_on_a_lock(core, loser)
    async with asyncio.timeout(10):
        answer = done(await loser)

    assert answer["task"] == str(task.ref)
    assert await posts(core, task) == []  # the holder posted nothing, and neither did the loser


async def test_a_repeat_that_waited_for_the_first_move_answers_with_the_task_as_it_left_it(
    core: Core, task: Task, clock: FakeClock
) -> None:
    """The repeat of a status move whose first call was still committing (a gateway gave up
    on it): once that commits, the repeat answers with the task as the move left it, not as it
    was when the repeat arrived."""
    request = tool_request(
        KEY,
        "update_task_status",
        task=str(task.ref),
        status=TaskStatus.IN_REVIEW.value,
        note=None,
        epoch=task.lease_epoch,
    )
    assert request is not None
    async with core.store.transaction() as holder:
        assert await holder.record_tool_request(
            "coder", KEY, request.tool, request.digest, task.id, clock.now
        )
        expect: TaskFields = {"status": task.status, "lease_epoch": task.lease_epoch}
        moved = {"status": TaskStatus.IN_REVIEW}
        assert await holder.compare_and_set(task.id, expect, moved, clock.now) is not None
        repeat = asyncio.create_task(
            tools(core).update_task_status(str(task.ref), "in_review", None, task.lease_epoch, KEY)
        )
        await waiting_on_a_lock(core, repeat)
    async with asyncio.timeout(10):
        answer = done(await repeat)

    assert answer["status"] == "in_review"


async def waiting_on_a_lock(core: Core, call: "asyncio.Task[Any]") -> None:
    """Returns once ``call`` waits for a lock: on PostgreSQL a backend waiting on a lock (polled
    against a deadline); on SQLite, where the call queues for this process's writer lock, once
    it has had a few turns of the loop."""
    if core.engine.dialect.name != "postgresql":
        for _ in range(20):
            await asyncio.sleep(0)  # lets the call run up to the writer lock
        assert not call.done()
        return
    async with asyncio.timeout(10):
        while True:
            async with core.engine.connect() as conn:
                waiting = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()"
                    )
                )
            if waiting:
                return
            assert not call.done()
            await asyncio.sleep(0.01)  # polling pg_stat_activity, bounded by the timeout


async def test_keys_are_remembered_for_a_day_then_pruned_and_usable_again(
    core: Core, task: Task, clock: FakeClock
) -> None:
    done(await post(core, task, "Tests pass", KEY))
    clock.advance(KEPT_FOR.total_seconds())
    assert await core.work.prune_tool_requests() == 0  # exactly a day old: still remembered
    done(await post(core, task, "Tests pass", KEY))
    assert await posts(core, task) == ["Tests pass"]

    clock.advance(1)
    assert await core.work.prune_tool_requests() == 1
    done(await post(core, task, "Tests pass", KEY))  # a new call under the forgotten key
    assert await posts(core, task) == ["Tests pass", "Tests pass"]


async def test_a_failing_prune_of_keys_is_logged_and_left_to_the_next_run() -> None:
    async def prune() -> int:
        raise RuntimeError("database is locked")

    with structlog.testing.capture_logs() as logs:
        await prune_tool_requests_job(prune)
    assert (logs[0]["event"], logs[0]["log_level"]) == ("prune_tool_requests.failed", "error")
