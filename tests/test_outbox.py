"""Outbox claiming: ordered per task thread, never two rows of a thread at once, never dropped."""

import asyncio
from datetime import timedelta

from bot.board import Board
from bot.outbox import OutboxKind, OutboxState
from bot.registry import AgentRegistry
from bot.task import Actor
from store.database import create_engine
from store.repository import SqlStore
from tests.conftest import FakeClock

ALICE = "U_ALICE"
CLAIM = timedelta(seconds=30)


async def seed(board: Board, registry: AgentRegistry, tasks: int) -> None:
    """Each task gets three rows: card post, directive, card update."""
    await registry.add_agent("coder")
    for n in range(tasks):
        task = await board.create_task("C1", f"task {n}", Actor.user(ALICE))
        await board.assign_task(task.ref, "coder", ALICE)


async def test_a_worker_gets_only_the_head_row_of_each_thread_in_order(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=2)
    first = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=10)
    assert [(r.task_id, r.kind) for r in first] == [
        (1, OutboxKind.CARD_POST),
        (2, OutboxKind.CARD_POST),
    ]
    assert all(r.state == OutboxState.IN_FLIGHT and r.attempts == 1 for r in first)
    assert await store.claim_outbox("w2", clock.now, clock.now + CLAIM, limit=10) == []

    assert await store.mark_delivered(first[0].id, "w1", {"ts": "1.0"}, clock.now)
    second = await store.claim_outbox("w2", clock.now, clock.now + CLAIM, limit=10)
    assert [(r.task_id, r.kind) for r in second] == [(1, OutboxKind.DIRECTIVE)]


async def test_a_row_released_for_retry_waits_for_its_time_and_keeps_the_thread_order(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [head] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=10)
    assert await store.release_for_retry(head.id, "w1", clock.now + timedelta(seconds=5), "429")
    assert await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=10) == []
    clock.advance(5)
    [again] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=10)
    assert (again.id, again.attempts, again.last_error) == (head.id, 2, "429")


async def test_an_expired_claim_can_be_taken_over_and_the_old_worker_cannot_settle_it(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [head] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=1)
    clock.advance(CLAIM.total_seconds() + 1)
    [taken] = await store.claim_outbox("w2", clock.now, clock.now + CLAIM, limit=1)
    assert (taken.id, taken.claimed_by) == (head.id, "w2")
    assert not await store.mark_delivered(head.id, "w1", {"ts": "1.0"}, clock.now)
    assert await store.mark_delivered(head.id, "w2", {"ts": "1.0"}, clock.now)
    [row, *_] = await store.list_outbox()
    assert (row.state, row.result) == (OutboxState.DELIVERED, {"ts": "1.0"})


async def test_concurrent_workers_never_claim_two_rows_of_one_thread_or_one_row_twice(
    database_url: str, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=20)
    engines = [create_engine(database_url) for _ in range(4)]
    delivered: list[tuple[str, int, int]] = []

    async def work(name: str, worker_store: SqlStore) -> None:
        while True:
            rows = await worker_store.claim_outbox(name, clock.now, clock.now + CLAIM, limit=3)
            if not rows:
                return
            for row in rows:
                delivered.append((name, row.task_id, row.id))
                assert await worker_store.mark_delivered(row.id, name, {"ok": True}, clock.now)

    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(work(f"w{i}", SqlStore(e)) for i, e in enumerate(engines)))
    finally:
        for engine in engines:
            await engine.dispose()

    ids = [row_id for _, _, row_id in delivered]
    assert len(ids) == len(set(ids)) == 60
    for task_id in range(1, 21):
        per_thread = [row_id for _, t, row_id in delivered if t == task_id]
        assert per_thread == sorted(per_thread)
    assert all(r.state == OutboxState.DELIVERED for r in await store.list_outbox())


async def test_a_row_whose_claim_expired_mid_flight_comes_back_marked_uncertain(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [head] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=1)
    assert head.uncertain is False
    clock.advance(CLAIM.total_seconds() + 1)
    [again] = await store.claim_outbox("w2", clock.now, clock.now + CLAIM, limit=1)
    assert (again.id, again.uncertain) == (head.id, True)
    assert await store.release_for_retry(again.id, "w2", clock.now, "500")
    [third] = await store.claim_outbox("w3", clock.now, clock.now + CLAIM, limit=1)
    assert third.uncertain is True
    assert await store.mark_delivered(third.id, "w3", {"ts": "9.9"}, clock.now, card=(1, "9.9"))
    async with store.read() as reader:
        task = await reader.get_task_by_id(1)
    assert task is not None
    assert (task.card_ts, task.thread_ts) == ("9.9", "9.9")


async def test_a_definite_refusal_does_not_make_a_row_uncertain(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [head] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=1)
    assert await store.release_for_retry(head.id, "w1", clock.now, "ratelimited", uncertain=False)
    [again] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=1)
    assert again.uncertain is False
    assert await store.release_for_retry(again.id, "w1", clock.now, "dropped", uncertain=True)
    [third] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=1)
    assert third.uncertain is True
