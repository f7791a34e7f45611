"""The reconcile's lock across replicas on PostgreSQL: one replica ticks, the others skip."""

import asyncio
from collections.abc import Sequence

import pytest

from bot.board import Board
from bot.reconcile import FoundProgress, ReconcileReport
from bot.registry import AgentRegistry
from bot.root import Overrides, open_core
from bot.settings import Settings
from bot.task import Actor, EventKind, Task, TaskRef
from channels.slack.admin_command import report_text
from store.repository import SqlStore
from tests.conftest import FakeClock, SequentialKeys, core_settings

pytestmark = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

ALICE = "U_ALICE"
TTL_S = 600


class HeldProbe:
    """Keeps its replica's tick going (inside the lock) until released; records what it read."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.read: list[TaskRef] = []

    async def find_progress(self, tasks: Sequence[Task]) -> FoundProgress:
        self.read += [t.ref for t in tasks]
        self.entered.set()
        async with asyncio.timeout(10):
            await self.release.wait()
        return FoundProgress()


class FailingProbe:
    async def find_progress(self, tasks: Sequence[Task]) -> FoundProgress:
        raise RuntimeError("the chat platform is down")


async def stale_tasks(board: Board, registry: AgentRegistry, clock: FakeClock) -> list[TaskRef]:
    await registry.add_agent("coder")
    refs = []
    for n in range(5):
        task = await board.create_task("C1", f"task {n}", Actor.user(ALICE))
        refs.append((await board.assign_task(task.ref, "coder", ALICE)).ref)
    clock.advance(TTL_S + 1)
    return refs


async def test_a_replica_skips_the_tick_while_another_holds_the_lock_and_reads_no_thread(
    database_url: str,
    board: Board,
    registry: AgentRegistry,
    store: SqlStore,
    clock: FakeClock,
    keys: SequentialKeys,
) -> None:
    refs = await stale_tasks(board, registry, clock)
    settings = core_settings(database_url)
    holder, other = HeldProbe(), HeldProbe()
    other.release.set()
    async with (
        open_core(settings, Overrides(clock=clock, new_key=keys, probe=holder)) as one,
        open_core(settings, Overrides(clock=clock, new_key=keys, probe=other)) as two,
    ):
        ticking = asyncio.create_task(one.reconciler.reconcile_stale_tasks())
        async with asyncio.timeout(10):
            await holder.entered.wait()
        skipped = await two.reconciler.reconcile_stale_tasks()
        holder.release.set()
        async with asyncio.timeout(10):
            report = await ticking
        after = await two.reconciler.reconcile_stale_tasks()

    assert skipped == ReconcileReport(held_elsewhere=True)
    assert (
        report_text(skipped) == "Reconcile tick: skipped, another replica is running one right now."
    )
    assert other.read == []  # the skipping replica spent none of the thread-read budget
    assert sorted(report.redispatched) == sorted(refs)
    assert not after.held_elsewhere  # released with the tick: the next tick anywhere runs
    assert after.acted == 0
    async with store.read() as reader:
        for ref in refs:
            task = await reader.get_task(ref)
            assert task is not None
            events = [e.kind for e in await reader.list_events(task.id)]
            assert events.count(EventKind.REDISPATCHED) == 1


async def test_a_tick_that_fails_releases_the_lock_for_the_next_tick(
    database_url: str,
    board: Board,
    registry: AgentRegistry,
    clock: FakeClock,
    keys: SequentialKeys,
) -> None:
    refs = await stale_tasks(board, registry, clock)
    settings = core_settings(database_url)
    async with open_core(
        settings, Overrides(clock=clock, new_key=keys, probe=FailingProbe())
    ) as one:
        with pytest.raises(RuntimeError, match="chat platform is down"):
            await one.reconciler.reconcile_stale_tasks()
        report = await tick_on_another_replica(settings, clock, keys)

    assert not report.held_elsewhere
    assert sorted(report.redispatched) == sorted(refs)


async def test_a_tick_cancelled_while_holding_the_lock_releases_it(
    database_url: str,
    board: Board,
    registry: AgentRegistry,
    clock: FakeClock,
    keys: SequentialKeys,
) -> None:
    refs = await stale_tasks(board, registry, clock)
    settings = core_settings(database_url)
    holder = HeldProbe()
    async with open_core(settings, Overrides(clock=clock, new_key=keys, probe=holder)) as one:
        ticking = asyncio.create_task(one.reconciler.reconcile_stale_tasks())
        async with asyncio.timeout(10):
            await holder.entered.wait()
        ticking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ticking
        report = await tick_on_another_replica(settings, clock, keys)

    assert not report.held_elsewhere
    assert sorted(report.redispatched) == sorted(refs)


async def tick_on_another_replica(
    settings: Settings, clock: FakeClock, keys: SequentialKeys
) -> ReconcileReport:
    """One tick on a replica of its own (its own engine, so its own connections)."""
    probe = HeldProbe()
    probe.release.set()
    async with open_core(settings, Overrides(clock=clock, new_key=keys, probe=probe)) as replica:
        return await replica.reconciler.reconcile_stale_tasks()
