"""Outbox claiming and settling: ordered per task thread, never two rows of a thread at once;
dead rows parked aside, and an admin's retry or drop as guarded moves."""

import asyncio
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.board import Board
from bot.outbox import OutboxKind, OutboxRow, OutboxState
from bot.registry import AgentRegistry
from bot.signal import Queued
from bot.task import Actor, EventKind, NewEvent
from store.database import create_engine
from store.migrate import downgrade, upgrade
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


def dead_event(row: OutboxRow, error: str, at: datetime) -> NewEvent:
    data = {"outbox_id": row.id, "kind": row.kind.value, "error": error}
    return NewEvent(row.task_id, EventKind.OUTBOX_DEAD, Actor.system("outbox"), at, data)


async def kill(store: SqlStore, row: OutboxRow, worker: str, at: datetime) -> None:
    assert await store.mark_dead(row.id, worker, "not_in_channel", dead_event(row, "x", at))


async def test_a_dead_row_no_longer_holds_up_the_later_rows_of_its_thread(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [card] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=10)
    assert await store.mark_delivered(card.id, "w1", {"ts": "1.0"}, clock.now, card=(1, "1.0"))
    [directive] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=10)
    await kill(store, directive, "w1", clock.now)

    [update] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=10)
    assert (update.kind, update.task_id) == (OutboxKind.CARD_UPDATE, 1)
    rows = {r.id: r for r in await store.list_outbox()}
    assert (rows[directive.id].state, rows[directive.id].last_error) == (
        OutboxState.DEAD,
        "not_in_channel",
    )
    assert rows[directive.id].claimed_by is None
    async with store.read() as reader:
        events = [e for e in await reader.list_events(1) if e.kind == EventKind.OUTBOX_DEAD]
    assert [(e.actor, e.data["outbox_id"]) for e in events] == [
        (Actor.system("outbox"), directive.id)
    ]


async def test_only_the_claiming_worker_parks_a_row_and_a_lost_claim_appends_no_event(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [head] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=1)
    assert not await store.mark_dead(head.id, "w2", "is_archived", dead_event(head, "x", clock.now))
    clock.advance(CLAIM.total_seconds() + 1)
    [taken] = await store.claim_outbox("w2", clock.now, clock.now + CLAIM, limit=1)
    assert not await store.mark_dead(head.id, "w1", "is_archived", dead_event(head, "x", clock.now))
    await kill(store, taken, "w2", clock.now)
    [row, *_] = await store.list_outbox()
    assert (row.state, row.uncertain) == (
        OutboxState.DEAD,
        True,
    )  # the expired claim may have posted
    async with store.read() as reader:
        dead = [e for e in await reader.list_events(1) if e.kind == EventKind.OUTBOX_DEAD]
    assert len(dead) == 1


async def test_the_backlog_counts_rows_still_to_be_sent_and_dead_rows_apart(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=2)  # six rows, all pending
    first = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=10)
    await kill(store, first[0], "w1", clock.now)
    assert await store.mark_delivered(first[1].id, "w1", {"ts": "2.0"}, clock.now)
    async with store.read() as reader:
        stats = await reader.board_stats()
        counts = await reader.count_outbox()
        dead = await reader.list_dead_outbox(limit=10)
        waiting = await reader.list_open_outbox(limit=10)
    assert (stats["outbox_backlog"], stats["outbox_dead"]) == (4, 1)
    assert counts == {OutboxState.PENDING: 4, OutboxState.IN_FLIGHT: 0, OutboxState.DEAD: 1}
    assert [r.id for r in dead] == [first[0].id]
    assert [r.kind for r in waiting] == [OutboxKind.DIRECTIVE, OutboxKind.CARD_UPDATE] * 2


async def test_a_retried_dead_row_is_due_at_once_and_holds_its_thread_in_order_again(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [card] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=1)
    await kill(store, card, "w1", clock.now)
    async with store.transaction() as unit:
        revived = await unit.retry_outbox_row(card.id, clock.now)
        assert revived is not None
        assert revived.state == OutboxState.PENDING
        assert await unit.retry_outbox_row(card.id, clock.now) is None  # pending is not dead
        assert unit.queued == {Queued.OUTBOX}
    # The revived card is again the head of its thread: the directive waits behind it.
    [again] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=10)
    assert (again.id, again.attempts, again.last_error) == (card.id, 2, "not_in_channel")


async def test_a_dropped_row_is_never_claimed_and_only_dead_or_pending_rows_can_be_dropped(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [card] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=1)
    async with store.transaction() as unit:
        assert await unit.drop_outbox_row(card.id) is None  # in flight: not droppable
    await kill(store, card, "w1", clock.now)
    async with store.transaction() as unit:
        dropped = await unit.drop_outbox_row(card.id)
        assert dropped is not None
        assert dropped.state == OutboxState.DROPPED
        directive = (await unit.list_open_outbox(limit=1))[0]
        assert (await unit.drop_outbox_row(directive.id)) is not None  # pending: droppable
        assert await unit.retry_outbox_row(card.id, clock.now) is None  # dropped is final
    [update] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=10)
    assert update.kind == OutboxKind.CARD_UPDATE
    assert await store.mark_delivered(update.id, "w1", {"ts": "1.0"}, clock.now)
    assert await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=10) == []


async def test_the_shortened_flag_is_kept_on_the_row_across_claims_and_later_retries(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await board.create_task("C1", "t", Actor.user(ALICE))
    [head] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=1)
    assert head.shortened is False
    assert await store.release_for_retry(head.id, "w1", clock.now, "msg_too_long", shortened=True)
    [again] = await store.claim_outbox("w2", clock.now, clock.now + CLAIM, limit=1)
    assert again.shortened is True
    assert await store.release_for_retry(again.id, "w2", clock.now, "http_500", uncertain=True)
    [third] = await store.claim_outbox("w3", clock.now, clock.now + CLAIM, limit=1)
    assert (third.shortened, third.uncertain) == (True, True)


async def test_downgrading_below_dead_letters_retries_dead_rows_and_settles_dropped_ones(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock, engine: AsyncEngine
) -> None:
    await seed(board, registry, tasks=1)
    [card] = await store.claim_outbox("w1", clock.now, clock.now + CLAIM, limit=1)
    await kill(store, card, "w1", clock.now)
    async with store.transaction() as unit:
        directive = (await unit.list_open_outbox(limit=1))[0]
        assert await unit.drop_outbox_row(directive.id) is not None
    await downgrade(engine, "0004")
    async with engine.connect() as conn:
        states = (await conn.execute(text("SELECT state FROM outbox ORDER BY id"))).scalars()
        assert list(states) == ["pending", "delivered", "pending"]
    await upgrade(engine)
    [row, *_] = await store.list_outbox()
    assert (row.state, row.shortened) == (OutboxState.PENDING, False)
