"""An external agent's attempt as its worker reports it, on both backends: liveness with the
output tail (``report_liveness``) and handing the attempt back (``release_task``), through the
tool layer the MCP endpoint serves."""

from typing import Any

import pytest

from bot.agent_work import MAX_RELEASES_PER_ATTEMPT
from bot.outbox import OutboxKind
from bot.root import Core
from bot.status import TaskStatus
from bot.task import Actor, EventKind, Task
from bot.tools import Done, Refusal, Refused, TaskTools, ToolResult
from bot.views import task_view
from bot.work import WakeReason
from channels.slack.replies import explain_event
from tests.conftest import FakeClock

ALICE = "U_ALICE"


@pytest.fixture
async def task(core: Core) -> Task:
    await core.registry.add_agent("coder")
    await core.registry.add_agent("reviewer")
    created = await core.board.create_task("C1", "Fix the flaky test", Actor.user(ALICE))
    return await core.board.assign_task(created.ref, "coder", ALICE)


def tools(core: Core, agent: str = "coder") -> TaskTools:
    """The tool set as the MCP endpoint builds it for ``agent``'s token."""
    return core.tools_for(agent)


def done(result: ToolResult) -> dict[str, Any]:
    assert isinstance(result, Done), result
    return result.data


def refused(result: ToolResult) -> Refusal:
    assert isinstance(result, Refused), result
    return result.reason


async def current(core: Core, task: Task) -> Task:
    async with core.store.read() as reader:
        found = await reader.get_task_by_id(task.id)
    assert found is not None
    return found


async def kinds(core: Core, task: Task) -> list[EventKind]:
    async with core.store.read() as reader:
        return [e.kind for e in await reader.list_events(task.id)]


async def outbox_kinds(core: Core, task: Task) -> list[OutboxKind]:
    return [row.kind for row in await core.store.list_outbox(task.id)]


async def test_a_liveness_report_stores_the_output_tail_and_updates_the_card_without_renewing(
    core: Core, task: Task, clock: FakeClock
) -> None:
    before = await outbox_kinds(core, task)
    clock.advance(30)

    data = done(
        await tools(core).report_liveness(str(task.ref), "step 1\nstep 2", task.lease_epoch)
    )

    alive = await current(core, task)
    assert data == {"ok": True, "recorded": True}
    assert (alive.output_tail, alive.output_tail_epoch) == ("step 1\nstep 2", task.lease_epoch)
    assert alive.current_output_tail == "step 1\nstep 2"
    assert alive.alive_at == clock.now
    assert alive.last_progress_at == task.last_progress_at  # liveness is not progress
    assert (await kinds(core, task))[-1] == EventKind.HEARTBEAT
    assert await outbox_kinds(core, task) == [*before, OutboxKind.CARD_UPDATE]
    view = task_view(alive)
    assert (view["output_tail"], view["output_tail_epoch"]) == ("step 1\nstep 2", alive.lease_epoch)


async def test_liveness_is_recorded_at_most_every_15_seconds_per_attempt(
    core: Core, task: Task, clock: FakeClock
) -> None:
    ref, epoch = str(task.ref), task.lease_epoch
    assert done(await tools(core).report_liveness(ref, "one", epoch))["recorded"] is True
    clock.advance(14.999)
    assert done(await tools(core).report_liveness(ref, "two", epoch))["recorded"] is False
    assert (await current(core, task)).output_tail == "one"
    clock.advance(0.001)  # exactly 15 s after the first
    assert done(await tools(core).report_liveness(ref, "three", epoch))["recorded"] is True
    assert (await current(core, task)).output_tail == "three"
    assert (await kinds(core, task)).count(EventKind.HEARTBEAT) == 2


async def test_a_new_attempt_reports_at_once_and_hides_the_last_attempts_tail(
    core: Core, task: Task, clock: FakeClock
) -> None:
    done(await tools(core).report_liveness(str(task.ref), "old output", task.lease_epoch))
    again = await core.board.assign_task(task.ref, "coder", ALICE)  # a new epoch
    assert again.current_output_tail is None  # the old attempt's tail is not this one's
    clock.advance(1)
    data = done(await tools(core).report_liveness(str(task.ref), "new output", again.lease_epoch))
    assert data["recorded"] is True
    assert (await current(core, task)).current_output_tail == "new output"


async def test_only_the_claim_holder_at_the_current_epoch_reports_liveness(
    core: Core, task: Task
) -> None:
    ref, epoch = str(task.ref), task.lease_epoch
    before = await current(core, task)
    assert refused(await tools(core, "reviewer").report_liveness(ref, "x", epoch)) == (
        Refusal.NOT_CLAIMED
    )
    assert refused(await tools(core).report_liveness(ref, "x", epoch - 1)) == Refusal.SUPERSEDED
    assert refused(await tools(core).report_liveness(ref, "x")) == Refusal.INVALID  # no epoch
    await core.board.cancel_task(task.ref, Actor.user(ALICE))
    assert refused(await tools(core).report_liveness(ref, "x", epoch)) == Refusal.NOT_CLAIMED
    after = await current(core, task)
    assert (after.output_tail, after.alive_at) == (before.output_tail, before.alive_at)


async def test_a_long_tail_keeps_its_last_2000_characters(core: Core, task: Task) -> None:
    tail = "".join(f"line {n}\n" for n in range(1000)) + "last\x00 line"
    done(await tools(core).report_liveness(str(task.ref), tail, task.lease_epoch))
    stored = (await current(core, task)).output_tail
    assert stored is not None
    assert len(stored) == 2000
    assert stored.endswith("line 999\nlast line")


async def test_releasing_dispatches_the_task_again_at_once_at_a_new_epoch(
    core: Core, task: Task, clock: FakeClock
) -> None:
    await core.board.update_task_status(
        task.ref, TaskStatus.IN_PROGRESS, Actor.agent("coder"), epoch=task.lease_epoch
    )
    async with core.store.transaction() as unit:
        await unit.consume_wakeups("coder", clock.now)  # the worker took the directive
    clock.advance(60)

    data = done(await tools(core).release_task(str(task.ref), task.lease_epoch))

    released = await current(core, task)
    assert data["epoch"] == released.lease_epoch > task.lease_epoch
    assert (released.status, released.claimed_by, released.attempts) == (
        TaskStatus.IN_PROGRESS,
        "coder",
        task.attempts,  # a release is not a failed attempt
    )
    assert released.last_progress_at == clock.now  # the new attempt's lease starts now
    async with core.store.read() as reader:
        [event] = [e for e in await reader.list_events(task.id) if e.kind == EventKind.RELEASED]
    assert event.data == {
        "agent": "coder",
        "attempt": 1,
        "epoch": task.lease_epoch,
        "new_epoch": released.lease_epoch,
    }
    async with core.store.transaction() as unit:
        [wakeup] = await unit.consume_wakeups("coder", clock.now)
    assert (wakeup.reason, wakeup.epoch) == (WakeReason.REDISPATCH, released.lease_epoch)
    rows = await core.store.list_outbox(task.id)
    directive, card = rows[-2:]
    assert (directive.kind, card.kind) == (OutboxKind.DIRECTIVE, OutboxKind.CARD_UPDATE)
    payload = directive.payload
    assert (payload["redispatch"], payload["released"]) == (True, True)
    assert (payload["epoch"], payload["attempt"]) == (released.lease_epoch, 1)


async def release_n(core: Core, task: Task, times: int) -> Task:
    """Releases the task's attempt ``times`` times, each at the epoch the last one left."""
    for _ in range(times):
        done(await tools(core).release_task(str(task.ref), (await current(core, task)).lease_epoch))
    return await current(core, task)


async def test_releases_past_the_free_ones_leave_the_attempt_to_its_lapse_which_counts_it(
    core: Core, task: Task, clock: FakeClock
) -> None:
    """Workers that always hand a task back cannot keep it circling: after
    MAX_RELEASES_PER_ATTEMPT releases of one attempt, a release wakes no one and posts no
    directive, the lease keeps running from the last release, and its lapse re-dispatches the
    task as a counted attempt (whose releases are free again); the last attempt's lapse blocks
    it, assignee kept."""
    async with core.store.transaction() as unit:
        await unit.consume_wakeups("coder", clock.now)
    await release_n(core, task, MAX_RELEASES_PER_ATTEMPT)
    async with core.store.transaction() as unit:
        assert len(await unit.consume_wakeups("coder", clock.now)) == MAX_RELEASES_PER_ATTEMPT
    directives = (await outbox_kinds(core, task)).count(OutboxKind.DIRECTIVE)
    last_released = (await current(core, task)).last_progress_at
    clock.advance(60)

    held_back = await release_n(core, task, 1)

    assert (held_back.claimed_by, held_back.attempts) == ("coder", 1)
    assert held_back.last_progress_at == last_released  # the lease was not renewed
    async with core.store.transaction() as unit:
        assert await unit.consume_wakeups("coder", clock.now) == []
    assert (await outbox_kinds(core, task)).count(OutboxKind.DIRECTIVE) == directives
    async with core.store.read() as reader:
        releases = [e for e in await reader.list_events(task.id) if e.kind == EventKind.RELEASED]
    assert [e.data.get("at_lapse", False) for e in releases] == [False] * 3 + [True]
    said = [explain_event(e, {}) for e in releases[-2:]]
    assert "dispatched again at lease epoch" in said[0]
    assert "dispatched again only when its lease lapses" in said[1]

    clock.advance(600)  # the lease lapses: a re-dispatch, counted
    report = await core.reconciler.reconcile_stale_tasks()
    assert report.redispatched == [task.ref]
    again = await current(core, task)
    assert (again.attempts, again.claimed_by) == (2, "coder")
    second = await release_n(core, task, 1)  # a new attempt's releases are free again
    assert second.last_progress_at == clock.now

    await release_n(core, task, MAX_RELEASES_PER_ATTEMPT)  # the last attempt circles too
    clock.advance(601)
    report = await core.reconciler.reconcile_stale_tasks()
    assert report.blocked == [task.ref]
    blocked = await current(core, task)
    assert (blocked.status, blocked.claimed_by, blocked.assignee) == (
        TaskStatus.BLOCKED,
        None,
        "coder",
    )


async def test_a_persons_new_dispatch_starts_the_free_releases_again(
    core: Core, task: Task, clock: FakeClock
) -> None:
    """A dispatch numbers its attempt 1 again: the releases of an earlier round do not count
    against the next one, so its first release is dispatched at once, and says so."""
    await release_n(core, task, MAX_RELEASES_PER_ATTEMPT)
    held = await current(core, task)
    last = done(await tools(core).release_task(str(task.ref), held.lease_epoch))
    assert last["redispatched"] is False  # the fourth of the round: at the lapse
    await core.board.update_task_status(task.ref, TaskStatus.BLOCKED, Actor.user(ALICE), "stuck")
    again = await core.board.assign_task(task.ref, "coder", ALICE)  # a person's new dispatch
    assert again.attempts == 1
    async with core.store.transaction() as unit:
        await unit.consume_wakeups("coder", clock.now)

    first = done(await tools(core).release_task(str(task.ref), again.lease_epoch))

    assert first["redispatched"] is True
    async with core.store.transaction() as unit:
        [wakeup] = await unit.consume_wakeups("coder", clock.now)
    assert (wakeup.reason, wakeup.epoch) == (WakeReason.REDISPATCH, first["epoch"])


async def test_after_a_release_the_old_attempts_calls_are_refused_as_superseded(
    core: Core, task: Task
) -> None:
    ref, old = str(task.ref), task.lease_epoch
    done(await tools(core).release_task(ref, old))
    assert refused(await tools(core).post_update(ref, "late", old)) == Refusal.SUPERSEDED
    assert refused(await tools(core).release_task(ref, old)) == Refusal.SUPERSEDED


async def test_only_a_task_under_a_lease_held_by_the_caller_can_be_released(
    core: Core, task: Task
) -> None:
    ref, epoch = str(task.ref), task.lease_epoch
    assert refused(await tools(core, "reviewer").release_task(ref, epoch)) == Refusal.NOT_CLAIMED
    await core.board.update_task_status(
        task.ref, TaskStatus.IN_REVIEW, Actor.agent("coder"), epoch=epoch
    )
    before = await kinds(core, task)
    assert refused(await tools(core).release_task(ref, epoch)) == Refusal.NOT_ALLOWED
    assert await kinds(core, task) == before


async def test_waiting_for_stop_items_alone_leaves_the_dispatches_for_later(
    core: Core, task: Task
) -> None:
    """A full worker waits for stops only; the directive stays for a worker with room."""
    stopped = await core.board.stop_task(task.ref, ALICE)
    coder = tools(core)

    first = done(await coder.wait_for_work(0, reasons=["stop"]))
    rest = done(await coder.wait_for_work(0))

    assert first["work"] == [
        {"task": str(task.ref), "reason": "stop", "epoch": stopped.task.lease_epoch}
    ]
    assert rest["work"] == [
        {"task": str(task.ref), "reason": "directive", "epoch": task.lease_epoch}
    ]
    assert refused(await coder.wait_for_work(0, reasons=["soon"])) == Refusal.INVALID
