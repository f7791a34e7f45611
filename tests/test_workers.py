"""Workers: claims last while their holder's heartbeat is fresh, and a live worker takes over
what a dead one held; a clean stop hands everything back at once."""

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from bot.board import Board
from bot.claims import Released
from bot.delivery import Delivered
from bot.outbox import OutboxRow, OutboxState
from bot.outbox_retries import DeliveryFailed, Retry
from bot.registry import AgentRegistry
from bot.root import Core
from bot.signal import Queued
from bot.task import Actor
from bot.work import WakeReason
from bot.workers import FencedDeliverer, Liveness
from store.database import create_engine
from store.repository import SqlStore
from tests.conftest import FakeClock

ALICE = "U_ALICE"
TIMEOUT = timedelta(seconds=15)


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def liveness(core: Core, clock: FakeClock, worker: str, mono: Monotonic | None = None) -> Liveness:
    return Liveness(
        core.store, clock, worker, TIMEOUT, notify=core.signal.notify, monotonic=mono or Monotonic()
    )


async def assigned_task(board: Board, registry: AgentRegistry) -> None:
    """One task with three outbox rows (card post, directive, card update) and a wake-up."""
    await registry.add_agent("coder")
    task = await board.create_task("C1", "task", Actor.user(ALICE))
    await board.assign_task(task.ref, "coder", ALICE)


async def claim_head_and_wakeup(store: SqlStore, clock: FakeClock, worker: str) -> int:
    """``worker`` claims the thread's head row and the task's wake-up; returns the row id."""
    [row] = await store.claim_outbox(worker, clock.now, limit=10)
    async with store.transaction() as unit:
        [wakeup] = await unit.claim_wakeups(worker, ["coder"], limit=10)
    assert wakeup.reason == WakeReason.DIRECTIVE
    return row.id


async def held_wakeups(store: SqlStore) -> list[str | None]:
    async with store.transaction() as unit:
        result = await unit._db.execute(
            text("SELECT claimed_by FROM agent_wakeups WHERE done_at IS NULL ORDER BY id")
        )
        return [r[0] for r in result]


async def registered(store: SqlStore) -> list[str]:
    async with store.read() as reader:
        result = await reader._db.execute(text("SELECT id FROM workers ORDER BY id"))
        return [r[0] for r in result]


async def test_a_live_worker_keeps_its_claims_however_long_its_rows_take(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await assigned_task(board, registry)
    a, b = liveness(core, clock, "a"), liveness(core, clock, "b")
    await a.start(beat=False)
    await b.start(beat=False)
    await claim_head_and_wakeup(store, clock, "a")
    for _ in range(10):  # an hour of beats: claims never lapse by time alone
        clock.advance(360)
        await a.beat()
        assert not await b.take_over()
    [head, *_] = await store.list_outbox()
    assert (head.state, head.claimed_by) == (OutboxState.IN_FLIGHT, "a")
    assert await held_wakeups(store) == ["a"]


async def test_a_dead_workers_rows_and_wakeups_are_taken_over_by_a_live_one(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await assigned_task(board, registry)
    a, b = liveness(core, clock, "a"), liveness(core, clock, "b")
    await a.start(beat=False)
    await b.start(beat=False)
    row_id = await claim_head_and_wakeup(store, clock, "a")
    woken: list[str] = []
    core.signal.subscribe(lambda: woken.append("outbox"), to=Queued.OUTBOX)
    core.signal.subscribe(lambda: woken.append("wakeups"), to=Queued.WAKEUPS)

    clock.advance(TIMEOUT.total_seconds())  # exactly the timeout: still alive
    await b.beat()
    assert (await store.list_outbox())[0].claimed_by == "a"

    clock.advance(0.001)
    await b.beat()
    [head, *_] = await store.list_outbox()
    assert (head.id, head.state, head.claimed_by) == (row_id, OutboxState.PENDING, None)
    assert head.uncertain, "the dead worker may have sent it: it is looked up before a re-post"
    assert await held_wakeups(store) == [None]
    assert sorted(woken) == ["outbox", "wakeups"]

    # The dead worker cannot settle what it lost, and the rows go to whoever claims next.
    assert not await store.mark_delivered(row_id, "a", {"ts": "1.0"}, clock.now)
    [again] = await store.claim_outbox("b", clock.now, limit=10)
    assert (again.id, again.claimed_by, again.uncertain) == (row_id, "b", True)
    async with store.transaction() as unit:
        [wakeup] = await unit.claim_wakeups("b", ["coder"], limit=10)
    assert wakeup.reason == WakeReason.DIRECTIVE


async def test_a_worker_presumed_dead_learns_it_at_its_next_beat_and_registers_again(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await assigned_task(board, registry)
    a, b = liveness(core, clock, "a"), liveness(core, clock, "b")
    lost = asyncio.Event()

    async def on_lost() -> None:
        lost.set()

    a.when_lost(on_lost)
    await a.start(beat=False)
    await b.start(beat=False)
    await claim_head_and_wakeup(store, clock, "a")
    clock.advance(60)  # "a" stalled (a long GC pause, a partition) and was taken over
    await b.beat()
    assert not lost.is_set()

    await a.beat()
    assert lost.is_set()
    assert await registered(store) == ["a", "b"]
    assert (await store.list_outbox())[0].claimed_by is None, "a's claims stay lost"


async def test_a_clean_stop_hands_back_every_claim_at_once_and_deregisters(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await assigned_task(board, registry)
    a = liveness(core, clock, "a")
    await a.start(beat=False)
    await claim_head_and_wakeup(store, clock, "a")

    assert await a.stop() == Released(outbox_rows=1, wakeups=1)
    [head, *_] = await store.list_outbox()
    assert (head.state, head.claimed_by) == (OutboxState.PENDING, None)
    assert await held_wakeups(store) == [None]
    assert await registered(store) == []


async def test_claims_of_a_holder_that_never_registered_are_taken_over(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    """Rows in flight from before workers existed (or a stray process) are not held for ever."""
    await assigned_task(board, registry)
    await claim_head_and_wakeup(store, clock, "old-version:123")
    b = liveness(core, clock, "b")
    await b.start(beat=False)  # the start itself takes over
    assert (await store.list_outbox())[0].state == OutboxState.PENDING
    assert await held_wakeups(store) == [None]


async def test_a_worker_never_takes_itself_over_however_far_the_clock_jumps(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await assigned_task(board, registry)
    a = liveness(core, clock, "a")
    await a.start(beat=False)
    await claim_head_and_wakeup(store, clock, "a")
    clock.advance(3600)
    assert not await a.take_over()
    assert (await store.list_outbox())[0].claimed_by == "a"


async def test_racing_takeovers_reopen_each_claim_once(
    database_url: str,
    core: Core,
    board: Board,
    registry: AgentRegistry,
    store: SqlStore,
    clock: FakeClock,
) -> None:
    await registry.add_agent("coder")
    for n in range(12):
        task = await board.create_task("C1", f"task {n}", Actor.user(ALICE))
        await board.assign_task(task.ref, "coder", ALICE)
    await store.claim_outbox("dead", clock.now, limit=100)
    async with store.transaction() as unit:
        await unit.claim_wakeups("dead", ["coder"], limit=100)
    engines = [create_engine(database_url) for _ in range(3)]
    try:
        takers = [
            Liveness(SqlStore(engine), clock, f"live-{n}", TIMEOUT, monotonic=Monotonic())
            for n, engine in enumerate(engines)
        ]
        for taker in takers:
            async with taker._store.transaction() as unit:
                await unit.register_worker(taker.worker, clock.now)
        released = await asyncio.gather(*(t.take_over() for t in takers))
    finally:
        for engine in engines:
            await engine.dispose()
    assert sum(r.outbox_rows for r in released) == 12
    assert sum(r.wakeups for r in released) == 12


async def test_a_worker_is_fresh_only_while_no_one_can_have_presumed_it_dead(
    core: Core, clock: FakeClock
) -> None:
    mono = Monotonic()
    a = liveness(core, clock, "a", mono)
    assert not a.fresh()
    await a.start(beat=False)
    assert a.fresh()
    mono.now += TIMEOUT.total_seconds() - a.interval - 0.01
    assert a.fresh()
    mono.now += 0.02  # one beat short of the timeout: it stops sending what it holds
    assert not a.fresh()
    await a.beat()
    assert a.fresh()


class RecordingDeliverer:
    def __init__(self) -> None:
        self.sent: list[int] = []

    async def deliver(self, row: OutboxRow) -> Delivered:
        self.sent.append(row.id)
        return Delivered(ts=f"{row.id}.0")


async def test_a_late_worker_sends_nothing_it_holds_until_its_heartbeat_lands_again(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await assigned_task(board, registry)
    mono = Monotonic()
    a = liveness(core, clock, "a", mono)
    await a.start(beat=False)
    [row] = await store.claim_outbox("a", clock.now, limit=10)
    inner = RecordingDeliverer()
    fenced = FencedDeliverer(inner, a)

    mono.now += TIMEOUT.total_seconds()  # the database was away: no beat landed
    with pytest.raises(DeliveryFailed) as failure:
        await fenced.deliver(row)
    assert (failure.value.retry, inner.sent) == (Retry.LATER, [])

    await a.beat()
    assert await fenced.deliver(row) == Delivered(ts=f"{row.id}.0")
    assert inner.sent == [row.id]


async def test_the_beat_after_a_silent_worker_lapses_comes_at_its_lapse_not_a_beat_later(
    core: Core, clock: FakeClock
) -> None:
    a, b = liveness(core, clock, "a"), liveness(core, clock, "b")
    await a.start(beat=False)
    assert a.next_wait() == a.interval, "alone: just the interval"
    clock.advance(1)
    await b.start(beat=False)
    await a.take_over()
    assert a.next_wait() == a.interval
    clock.advance(TIMEOUT.total_seconds() - 2)  # "b" silent since; lapses in 2 s
    await a.beat()
    assert a.next_wait() == pytest.approx(2.05), "sooner than the 3 s interval"
    clock.advance(2.05)
    await a.beat()
    assert await registered(core.store) == ["a"]
