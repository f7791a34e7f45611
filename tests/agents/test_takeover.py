"""A built-in agent's run outlives its process: the wake-up that started it stays held while the
worker lives, and another worker resumes the run when it dies or shuts down."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.agents import AgentKind, AgentSettings
from bot.outbox import OutboxKind
from bot.root import Overrides, open_service
from bot.status import TaskStatus
from bot.task import Actor, Task
from tests.agents.conftest import ALICE, Runtime, runtime_settings
from tests.agents.standins import AnthropicStandIn, Hang, Reply, ToolUse
from tests.conftest import FakeClock


def in_review(task: Task) -> ToolUse:
    return ToolUse("update_task_status", {"task": str(task.ref), "status": "in_review"})


@asynccontextmanager
async def worker(
    name: str, database_url: str, anthropic: AnthropicStandIn, clock: FakeClock
) -> AsyncIterator[Runtime]:
    settings = runtime_settings(database_url, anthropic.url)
    overrides = Overrides(clock=clock, port=0, worker=name, run_loops=False)
    async with open_service(settings, overrides) as service:
        yield Runtime(service, anthropic)


async def assigned(rt: Runtime) -> Task:
    await rt.core.registry.add_agent(
        "claude-1", AgentKind.CLAUDE, settings=AgentSettings(model="claude-standin-1")
    )
    task = await rt.core.board.create_task("C1", "Add a health check", Actor.user(ALICE))
    return await rt.core.board.assign_task(task.ref, "claude-1", ALICE)


async def directives(rt: Runtime, task: Task) -> int:
    rows = await rt.core.store.list_outbox(task.id)
    return sum(1 for r in rows if r.kind == OutboxKind.DIRECTIVE)


async def test_a_run_whose_worker_died_is_resumed_by_a_live_one_on_the_same_attempt(
    agents_db: str, anthropic: AnthropicStandIn, clock: FakeClock
) -> None:
    async with (
        worker("a", agents_db, anthropic, clock) as a,
        worker("b", agents_db, anthropic, clock) as b,
    ):
        task = await assigned(a)
        anthropic.script(Hang(), Reply([in_review(task)]))
        assert await a.runner.run_once() == 1
        async with asyncio.timeout(10):
            await anthropic.until_hung(1)
        assert await b.runner.run_once() == 0, "a live worker's run is not taken"
        [stuck] = a.runner.active.values()

        clock.advance(a.core.settings.worker_timeout + 1)  # "a" stops beating
        await b.service.liveness.beat()
        assert await b.runner.run_once() == 1
        await b.supervisor.drain()
        final = await b.task(task)
        assert (final.status, final.attempts, final.lease_epoch) == (
            TaskStatus.IN_REVIEW,
            1,
            task.lease_epoch,
        ), "resumed on the same attempt, not re-dispatched"
        assert await directives(b, task) == 1

        # "a" comes back: it learns it was presumed dead and drops its run.
        await a.service.liveness.beat()
        assert stuck.task.cancelled()
        assert a.runner.active == {}


async def test_a_clean_shutdown_hands_its_runs_to_another_worker_at_once(
    agents_db: str, anthropic: AnthropicStandIn, clock: FakeClock
) -> None:
    async with worker("b", agents_db, anthropic, clock) as b:
        async with worker("a", agents_db, anthropic, clock) as a:
            task = await assigned(a)
            anthropic.script(Hang(), Reply([in_review(task)]))
            assert await a.runner.run_once() == 1
            async with asyncio.timeout(10):
                await anthropic.until_hung(1)
        # No clock moved: the run's wake-up was handed back by the shutdown itself.
        assert await b.runner.run_once() == 1
        await b.supervisor.drain()
        assert (await b.task(task)).status == TaskStatus.IN_REVIEW


async def test_a_run_that_ends_finishes_its_wakeup_so_no_one_runs_it_again(
    agents_db: str, anthropic: AnthropicStandIn, clock: FakeClock
) -> None:
    async with (
        worker("a", agents_db, anthropic, clock) as a,
        worker("b", agents_db, anthropic, clock) as b,
    ):
        task = await assigned(a)
        anthropic.script(Reply([in_review(task)]))
        await a.settle()
        assert (await a.task(task)).status == TaskStatus.IN_REVIEW
        clock.advance(a.core.settings.worker_timeout + 1)
        await b.service.liveness.beat()
        assert await b.runner.run_once() == 0
