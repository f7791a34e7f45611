"""The reconcile with a fixed clock: live leases kept, stale ones re-dispatched, then blocked."""

import asyncio
from collections.abc import Sequence
from datetime import datetime

import pytest

from bot.board import Board
from bot.channel_policies import ChannelPolicies
from bot.errors import Superseded
from bot.outbox import OutboxKind
from bot.reconcile import FoundProgress, Reconciler, SoleReplica
from bot.registry import AgentRegistry
from bot.root import Core, Overrides, open_core
from bot.status import TaskStatus
from bot.task import Actor, EventKind, LeasePolicy, Task, TaskRef
from bot.thread_posts import ThreadPosts
from store.repository import SqlStore
from tests.conftest import FakeClock, SequentialKeys, core_settings, reconciler_with

ALICE = "U_ALICE"
TTL_S = 600


async def load(store: SqlStore, ref: TaskRef) -> Task:
    async with store.read() as reader:
        task = await reader.get_task(ref)
    assert task is not None
    return task


@pytest.fixture
async def assigned(board: Board, registry: AgentRegistry) -> Task:
    await registry.add_agent("coder", slack_user_id="U_CODER")
    task = await board.create_task("C1", "Ship the release notes", Actor.user(ALICE))
    return await board.assign_task(task.ref, "coder", ALICE)


async def test_a_live_lease_is_untouched_up_to_exactly_the_ttl(
    reconciler: Reconciler, store: SqlStore, assigned: Task, clock: FakeClock
) -> None:
    clock.advance(TTL_S)
    report = await reconciler.reconcile_stale_tasks()
    assert report.acted == 0
    assert await load(store, assigned.ref) == assigned


async def test_a_stale_lease_is_redispatched_then_blocked_on_the_last_attempt(
    reconciler: Reconciler, store: SqlStore, assigned: Task, clock: FakeClock
) -> None:
    clock.advance(TTL_S + 1)
    first = await reconciler.reconcile_stale_tasks()
    assert first.redispatched == [assigned.ref]
    again = await load(store, assigned.ref)
    assert (again.attempts, again.lease_epoch) == (2, assigned.lease_epoch + 1)
    assert (again.claimed_by, again.last_progress_at) == ("coder", clock.now)

    clock.advance(TTL_S + 1)
    second = await reconciler.reconcile_stale_tasks()
    assert second.blocked == [assigned.ref]
    blocked = await load(store, assigned.ref)
    assert (blocked.status, blocked.claimed_by, blocked.assignee) == (
        TaskStatus.BLOCKED,
        None,
        "coder",
    )

    async with store.read() as reader:
        events = await reader.list_events(assigned.id)
    assert [e.kind for e in events][-2:] == [EventKind.REDISPATCHED, EventKind.BLOCKED]
    assert events[-2].data["attempt"] == 2
    assert events[-1].data["reason"] == "no progress for 600s after 2 attempt(s)"
    assert events[-1].actor == Actor.system("reconcile")

    rows = await store.list_outbox(assigned.id)
    kinds = [r.kind for r in rows]
    assert kinds[-4:] == [
        OutboxKind.DIRECTIVE,
        OutboxKind.CARD_UPDATE,
        OutboxKind.ESCALATION,
        OutboxKind.CARD_UPDATE,
    ]
    redirective = rows[-4].payload
    assert redirective["redispatch"] is True
    assert (redirective["attempt"], redirective["max_attempts"]) == (2, 2)
    assert redirective["on_behalf_of"] == ALICE
    assert rows[-2].payload["assigned_by"] == ALICE

    clock.advance(10 * TTL_S)
    assert (await reconciler.reconcile_stale_tasks()).acted == 0


async def test_the_assignees_post_keeps_the_lease_but_anyone_elses_does_not(
    thread_posts: ThreadPosts,
    reconciler: Reconciler,
    store: SqlStore,
    assigned: Task,
    clock: FakeClock,
) -> None:
    clock.advance(TTL_S - 1)
    assert await thread_posts.renew_lease(assigned.id, "coder")
    clock.advance(TTL_S - 1)
    assert (await reconciler.reconcile_stale_tasks()).acted == 0

    assert not await thread_posts.renew_lease(assigned.id, "someone-else")
    clock.advance(2)
    assert (await reconciler.reconcile_stale_tasks()).redispatched == [assigned.ref]


async def test_tasks_in_review_or_unclaimed_are_never_reconciled(
    board: Board, reconciler: Reconciler, assigned: Task, clock: FakeClock
) -> None:
    await board.update_task_status(assigned.ref, TaskStatus.IN_REVIEW, Actor.agent("coder"))
    await board.create_task("C1", "nobody's yet", Actor.user(ALICE))
    clock.advance(100 * TTL_S)
    assert (await reconciler.reconcile_stale_tasks()).acted == 0


async def test_a_redispatch_supersedes_the_old_runs_epoch(
    board: Board, reconciler: Reconciler, assigned: Task, clock: FakeClock
) -> None:
    clock.advance(TTL_S + 1)
    await reconciler.reconcile_stale_tasks()
    with pytest.raises(Superseded):
        await board.update_task_status(
            assigned.ref, TaskStatus.IN_PROGRESS, Actor.agent("coder"), epoch=assigned.lease_epoch
        )


class FoundPost:
    """A probe that reports a post the service missed, at a given time."""

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.asked: list[TaskRef] = []

    async def find_progress(self, tasks: Sequence[Task]) -> FoundProgress:
        self.asked += [t.ref for t in tasks]
        return FoundProgress({t.id: self.at for t in tasks})


async def test_progress_the_probe_finds_is_counted_before_redispatching(
    core: Core, store: SqlStore, keys: SequentialKeys, assigned: Task, clock: FakeClock
) -> None:
    clock.advance(TTL_S + 5)
    probe = FoundPost(at=clock.now)
    report = await reconciler_with(core, probe, clock, keys).reconcile_stale_tasks()
    assert probe.asked == [assigned.ref]
    assert (report.renewed, report.acted) == ([assigned.ref], 0)
    assert (await load(store, assigned.ref)).last_progress_at == clock.now


async def test_progress_found_but_itself_older_than_the_ttl_does_not_spare_the_task(
    core: Core, keys: SequentialKeys, assigned: Task, clock: FakeClock
) -> None:
    old_post = clock.advance(1)
    clock.advance(3 * TTL_S)
    probe = FoundPost(at=old_post)
    report = await reconciler_with(core, probe, clock, keys).reconcile_stale_tasks()
    assert (report.renewed, report.redispatched) == ([], [assigned.ref])


class Barrier:
    """A probe that holds every reconciler between detect and act until all have detected."""

    def __init__(self, parties: int) -> None:
        self.barrier = asyncio.Barrier(parties)

    async def find_progress(self, tasks: Sequence[Task]) -> FoundProgress:
        async with asyncio.timeout(10):
            await self.barrier.wait()
        return FoundProgress()


async def test_two_replicas_reconciling_at_once_act_exactly_once_per_task(
    database_url: str,
    board: Board,
    registry: AgentRegistry,
    policy: LeasePolicy,
    keys: SequentialKeys,
    store: SqlStore,
    clock: FakeClock,
) -> None:
    await registry.add_agent("coder")
    refs = []
    for n in range(60):
        task = await board.create_task("C1", f"task {n}", Actor.user(ALICE))
        refs.append((await board.assign_task(task.ref, "coder", ALICE)).ref)
    clock.advance(TTL_S + 1)

    barrier = Barrier(parties=2)
    # Without the lock across replicas (which would let only one tick), so that the two
    # replicas really act at once and only the compare-and-set keeps them apart.
    overrides = Overrides(
        clock=clock, new_key=keys, probe=barrier, reconcile_batch=25, reconcile_lock=SoleReplica()
    )
    settings = core_settings(database_url)
    async with open_core(settings, overrides) as one, open_core(settings, overrides) as two:
        replicas = [one.reconciler, two.reconciler]
        reports = await asyncio.gather(*(r.reconcile_stale_tasks() for r in replicas))

    acted = sorted(ref for report in reports for ref in report.redispatched)
    assert acted == sorted(refs)
    assert sum(report.skipped for report in reports) == len(refs)
    async with store.read() as reader:
        for ref in refs:
            task = await reader.get_task(ref)
            assert task is not None
            assert task.attempts == 2
            events = await reader.list_events(task.id)
            assert [e.kind for e in events].count(EventKind.REDISPATCHED) == 1
    directives = [r for r in await store.list_outbox() if r.payload.get("redispatch") is True]
    assert len(directives) == len(refs)


async def test_a_channels_own_ttl_and_attempts_override_the_global_policy(
    board: Board,
    channel_policies: ChannelPolicies,
    registry: AgentRegistry,
    reconciler: Reconciler,
    store: SqlStore,
    clock: FakeClock,
) -> None:
    await registry.add_agent("coder")
    await channel_policies.set_channel_policy("C_FAST", "U_ADMIN", lease_ttl_s=60, max_attempts=1)
    fast = await board.create_task("C_FAST", "quick one", Actor.user(ALICE))
    slow = await board.create_task("C_SLOW", "slow one", Actor.user(ALICE))
    fast = await board.assign_task(fast.ref, "coder", ALICE)
    await board.assign_task(slow.ref, "coder", ALICE)
    [directive] = [r for r in await store.list_outbox(fast.id) if r.kind == OutboxKind.DIRECTIVE]
    assert (directive.payload["lease_ttl_s"], directive.payload["max_attempts"]) == (60, 1)

    clock.advance(61)
    report = await reconciler.reconcile_stale_tasks()
    assert (report.blocked, report.redispatched) == ([fast.ref], [])

    book = await channel_policies.set_channel_policy(
        "C_FAST", "U_ADMIN", lease_ttl_s=None, max_attempts=3
    )
    assert book.for_channel("C_FAST").max_dispatch_attempts == 3
    assert book.for_channel("C_FAST").lease_ttl.total_seconds() == 60
    assert book.for_channel("C_SLOW") == book.default


class RateLimited:
    """A probe that could not read any thread this tick."""

    async def find_progress(self, tasks: Sequence[Task]) -> FoundProgress:
        return FoundProgress(unchecked=frozenset(t.id for t in tasks))


async def test_a_task_the_probe_could_not_check_waits_for_the_next_tick(
    core: Core, store: SqlStore, keys: SequentialKeys, assigned: Task, clock: FakeClock
) -> None:
    clock.advance(TTL_S + 1)
    blind = reconciler_with(core, RateLimited(), clock, keys)
    report = await blind.reconcile_stale_tasks()
    assert (report.deferred, report.acted) == (1, 0)
    assert await load(store, assigned.ref) == assigned
