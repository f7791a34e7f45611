"""Outbox claiming and settling: ordered per task thread, never two rows of a thread at once,
no lane past its room; card updates coalesced at the claim; dead rows parked aside, an admin's
retry or drop as guarded moves, and a stopping worker's rows handed back."""

import asyncio
import shutil
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.board import Board
from bot.outbox import OutboxKind, OutboxRow, OutboxState
from bot.registry import AgentRegistry
from bot.root import Core
from bot.signal import Queued
from bot.status import TaskStatus
from bot.task import Actor, EventKind, NewEvent, TaskRef
from store.database import create_engine
from store.migrate import downgrade, upgrade
from store.outbox_claims import CLAIM_CANDIDATES, candidate_params
from store.repository import SqlStore
from tests.conftest import FakeClock

ALICE = "U_ALICE"


async def seed(board: Board, registry: AgentRegistry, tasks: int) -> None:
    """Each task gets three rows: card post, directive, card update."""
    await registry.add_agent("coder")
    for n in range(tasks):
        task = await board.create_task("C1", f"task {n}", Actor.user(ALICE))
        await board.assign_task(task.ref, "coder", ALICE)


async def take_over_from_the_dead(store: SqlStore, clock: FakeClock, me: str) -> None:
    """Reopens the claims of every worker not alive (none registered here) as the takeover
    does when a worker died."""
    async with store.transaction() as unit:
        await unit.register_worker(me, clock.now)
        await unit.take_over_dead_workers(clock.now - timedelta(seconds=15), me)


async def test_a_worker_gets_only_the_head_row_of_each_thread_in_order(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=2)
    first = await store.claim_outbox("w1", clock.now, limit=10)
    assert [(r.task_id, r.kind) for r in first] == [
        (1, OutboxKind.CARD_POST),
        (2, OutboxKind.CARD_POST),
    ]
    assert all(r.state == OutboxState.IN_FLIGHT and r.attempts == 1 for r in first)
    assert await store.claim_outbox("w2", clock.now, limit=10) == []

    assert await store.mark_delivered(first[0].id, "w1", {"ts": "1.0"}, clock.now)
    second = await store.claim_outbox("w2", clock.now, limit=10)
    # After its card, a thread is two sequences: its posts, and its card updates.
    assert [(r.task_id, r.kind) for r in second] == [
        (1, OutboxKind.DIRECTIVE),
        (1, OutboxKind.CARD_UPDATE),
    ]


async def test_a_post_never_waits_for_a_card_update_of_its_thread_nor_one_for_a_post(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    """Card updates are paced for the whole workspace; a thread's posts go past them."""
    await seed(board, registry, tasks=1)
    [card] = await store.claim_outbox("w1", clock.now, limit=10)
    assert await store.mark_delivered(card.id, "w1", {"ts": "1.0"}, clock.now)
    directive, update = await store.claim_outbox("w1", clock.now, limit=10)
    assert (directive.kind, update.kind) == (OutboxKind.DIRECTIVE, OutboxKind.CARD_UPDATE)
    ref = TaskRef.parse(card.ref)
    # While both are in flight: a status change (a card update), then the agent's post.
    await board.update_task_status(ref, TaskStatus.IN_PROGRESS, Actor.agent("coder"))
    await core.work.post_update(ref, "coder", "on it")
    assert await store.claim_outbox("w1", clock.now, limit=10) == []

    assert await store.mark_delivered(directive.id, "w1", {"ts": "2.0"}, clock.now)
    [post] = await store.claim_outbox("w1", clock.now, limit=10)
    assert post.kind == OutboxKind.AGENT_POST, "past the card update still in flight"
    assert await store.mark_delivered(update.id, "w1", {"ts": "1.0"}, clock.now)
    [second_update] = await store.claim_outbox("w1", clock.now, limit=10)
    assert second_update.kind == OutboxKind.CARD_UPDATE, "past the post still in flight"


async def test_a_row_released_for_retry_waits_for_its_time_and_keeps_the_thread_order(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [head] = await store.claim_outbox("w1", clock.now, limit=10)
    assert await store.release_for_retry(head.id, "w1", clock.now + timedelta(seconds=5), "429")
    assert await store.claim_outbox("w1", clock.now, limit=10) == []
    clock.advance(5)
    [again] = await store.claim_outbox("w1", clock.now, limit=10)
    assert (again.id, again.attempts, again.last_error) == (head.id, 2, "429")


async def test_a_row_in_flight_is_never_claimed_again_while_its_worker_holds_it(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [head] = await store.claim_outbox("w1", clock.now, limit=1)
    clock.advance(3600)  # however long it takes: a claim lasts as long as its worker
    assert await store.claim_outbox("w2", clock.now, limit=10) == []
    assert await store.mark_delivered(head.id, "w1", {"ts": "1.0"}, clock.now)


async def test_a_reopened_row_can_be_taken_by_another_worker_and_the_old_one_cannot_settle_it(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [head] = await store.claim_outbox("w1", clock.now, limit=1)
    await take_over_from_the_dead(store, clock, "w2")
    [taken] = await store.claim_outbox("w2", clock.now, limit=1)
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
    delivered: list[tuple[str, int, int, OutboxKind]] = []

    async def work(name: str, worker_store: SqlStore) -> None:
        while True:
            rows = await worker_store.claim_outbox(name, clock.now, limit=3)
            if not rows:
                return
            for row in rows:
                delivered.append((name, row.task_id, row.id, row.kind))
                assert await worker_store.mark_delivered(row.id, name, {"ok": True}, clock.now)

    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(work(f"w{i}", SqlStore(e)) for i, e in enumerate(engines)))
    finally:
        for engine in engines:
            await engine.dispose()

    ids = [row_id for _, _, row_id, _ in delivered]
    assert len(ids) == len(set(ids)) == 60
    for task_id in range(1, 21):
        thread = [(row_id, kind) for _, t, row_id, kind in delivered if t == task_id]
        assert thread[0][1] == OutboxKind.CARD_POST  # the card before anything in its thread
        for updates in (True, False):  # then its posts in order, and its card updates in order
            sequence = [i for i, kind in thread[1:] if (kind == OutboxKind.CARD_UPDATE) == updates]
            assert sequence == sorted(sequence)
    assert all(r.state == OutboxState.DELIVERED for r in await store.list_outbox())


async def test_a_row_reopened_from_a_dead_worker_comes_back_uncertain_and_stays_so(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [head] = await store.claim_outbox("w1", clock.now, limit=1)
    assert head.uncertain is False
    await take_over_from_the_dead(store, clock, "w2")
    [again] = await store.claim_outbox("w2", clock.now, limit=1)
    assert (again.id, again.uncertain) == (head.id, True)
    assert await store.release_for_retry(again.id, "w2", clock.now, "500")
    [third] = await store.claim_outbox("w3", clock.now, limit=1)
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
    [head] = await store.claim_outbox("w1", clock.now, limit=1)
    assert await store.release_for_retry(head.id, "w1", clock.now, "ratelimited", uncertain=False)
    [again] = await store.claim_outbox("w1", clock.now, limit=1)
    assert again.uncertain is False
    assert await store.release_for_retry(again.id, "w1", clock.now, "dropped", uncertain=True)
    [third] = await store.claim_outbox("w1", clock.now, limit=1)
    assert third.uncertain is True


def dead_event(row: OutboxRow, error: str, at: datetime) -> NewEvent:
    data = {"outbox_id": row.id, "kind": row.kind.value, "error": error}
    return NewEvent(row.task_id, EventKind.OUTBOX_DEAD, Actor.system("outbox"), at, data)


async def kill(store: SqlStore, row: OutboxRow, worker: str, at: datetime) -> None:
    assert await store.mark_dead(row.id, worker, "not_in_channel", dead_event(row, "x", at))


async def test_a_dead_row_no_longer_holds_up_the_later_rows_of_its_thread(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    await core.work.post_update(TaskRef("C1", 1), "coder", "on it")  # a post after the update
    [card] = await store.claim_outbox("w1", clock.now, limit=10)
    assert await store.mark_delivered(card.id, "w1", {"ts": "1.0"}, clock.now, card=(1, "1.0"))
    directive, _update = await store.claim_outbox("w1", clock.now, limit=10)
    await kill(store, directive, "w1", clock.now)

    [post] = await store.claim_outbox("w1", clock.now, limit=10)
    assert (post.kind, post.task_id) == (OutboxKind.AGENT_POST, 1)
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
    [head] = await store.claim_outbox("w1", clock.now, limit=1)
    assert not await store.mark_dead(head.id, "w2", "is_archived", dead_event(head, "x", clock.now))
    await take_over_from_the_dead(store, clock, "w2")
    [taken] = await store.claim_outbox("w2", clock.now, limit=1)
    assert not await store.mark_dead(head.id, "w1", "is_archived", dead_event(head, "x", clock.now))
    await kill(store, taken, "w2", clock.now)
    [row, *_] = await store.list_outbox()
    assert (row.state, row.uncertain) == (OutboxState.DEAD, True)  # w1 may have posted it
    async with store.read() as reader:
        dead = [e for e in await reader.list_events(1) if e.kind == EventKind.OUTBOX_DEAD]
    assert len(dead) == 1


async def test_the_backlog_counts_rows_still_to_be_sent_and_dead_rows_apart(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=2)  # six rows, all pending
    first = await store.claim_outbox("w1", clock.now, limit=10)
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
    # Counted and listed for some tasks only (what one viewer may see): the others' rows left out.
    dead_task = first[0].task_id
    other = next(r.task_id for r in waiting if r.task_id != dead_task)
    async with store.read() as reader:
        mine = await reader.count_outbox({dead_task})
        theirs = await reader.list_open_outbox(limit=10, task_ids={other})
        none = await reader.count_outbox(set())
    assert sum(mine.values()) == 1 + sum(r.task_id == dead_task for r in waiting)
    assert mine[OutboxState.DEAD] == 1
    assert {r.task_id for r in theirs} == {other}
    assert len(theirs) == sum(r.task_id == other for r in waiting)
    assert set(none.values()) == {0}


async def test_a_retried_dead_row_is_due_at_once_and_holds_its_thread_in_order_again(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [card] = await store.claim_outbox("w1", clock.now, limit=1)
    await kill(store, card, "w1", clock.now)
    async with store.transaction() as unit:
        revived = await unit.retry_outbox_row(card.id, clock.now)
        assert revived is not None
        assert revived.state == OutboxState.PENDING
        assert await unit.retry_outbox_row(card.id, clock.now) is None  # pending is not dead
        assert unit.queued == {Queued.OUTBOX}
    # The revived card is again the head of its thread: the directive waits behind it.
    [again] = await store.claim_outbox("w1", clock.now, limit=10)
    assert (again.id, again.attempts, again.last_error) == (card.id, 2, "not_in_channel")


async def test_a_dropped_row_is_never_claimed_and_only_dead_or_pending_rows_can_be_dropped(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [card] = await store.claim_outbox("w1", clock.now, limit=1)
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
    [update] = await store.claim_outbox("w1", clock.now, limit=10)
    assert update.kind == OutboxKind.CARD_UPDATE
    assert await store.mark_delivered(update.id, "w1", {"ts": "1.0"}, clock.now)
    assert await store.claim_outbox("w1", clock.now, limit=10) == []


async def test_the_shortened_flag_is_kept_on_the_row_across_claims_and_later_retries(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await board.create_task("C1", "t", Actor.user(ALICE))
    [head] = await store.claim_outbox("w1", clock.now, limit=1)
    assert head.shortened is False
    assert await store.release_for_retry(head.id, "w1", clock.now, "msg_too_long", shortened=True)
    [again] = await store.claim_outbox("w2", clock.now, limit=1)
    assert again.shortened is True
    assert await store.release_for_retry(again.id, "w2", clock.now, "http_500", uncertain=True)
    [third] = await store.claim_outbox("w3", clock.now, limit=1)
    assert (third.shortened, third.uncertain) == (True, True)


async def test_downgrading_below_dead_letters_retries_dead_rows_and_settles_dropped_ones(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock, engine: AsyncEngine
) -> None:
    await seed(board, registry, tasks=1)
    [card] = await store.claim_outbox("w1", clock.now, limit=1)
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


async def cards_in(board: Board, channels: dict[str, int]) -> None:
    """``count`` tasks in each channel, each with its card post pending."""
    for channel, count in channels.items():
        for n in range(count):
            await board.create_task(channel, f"task {n}", Actor.user(ALICE))


def per_channel(rows: list[OutboxRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        channel = row.ref.partition("#")[0]
        counts[channel] = counts.get(channel, 0) + 1
    return counts


async def test_a_claim_takes_at_most_a_lanes_room_and_passes_over_full_lanes(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, {"C1": 10, "C2": 1, "C3": 2})
    first = await store.claim_outbox("w1", clock.now, limit=100, per_lane=4)
    assert per_channel(first) == {"C1": 4, "C2": 1, "C3": 2}
    assert [r.id for r in first] == sorted(r.id for r in first)

    await cards_in(board, {"C2": 1, "C4": 1})
    held = {("C1", False): 4, ("C3", False): 1}  # C1 is full; C3 has room for 3
    second = await store.claim_outbox("w1", clock.now, limit=100, per_lane=4, held=held)
    assert per_channel(second) == {"C2": 1, "C4": 1}

    held = {("C1", False): 3}
    [third] = await store.claim_outbox("w1", clock.now, limit=100, per_lane=4, held=held)
    assert third.ref.startswith("C1#")


async def test_a_partly_held_lane_does_not_crowd_other_channels_out_of_the_limit(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, {"C1": 6, "C2": 2})
    held = {("C1", False): 3}
    rows = await store.claim_outbox("w1", clock.now, limit=3, per_lane=4, held=held)
    assert per_channel(rows) == {"C1": 1, "C2": 2}


async def test_a_channels_card_updates_are_a_lane_apart_from_its_posts(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, {"C1": 3})
    for card in await store.claim_outbox("w1", clock.now, limit=10):
        assert await store.mark_delivered(card.id, "w1", {"ts": "1.0"}, clock.now)
    for n in (1, 2):
        await board.update_task_status(TaskRef("C1", n), TaskStatus.IN_PROGRESS, Actor.user(ALICE))
    await board.create_task("C1", "a third card", Actor.user(ALICE))
    # The posts lane is full: the card updates are claimed all the same, and the reverse.
    held = {("C1", False): 4}
    rows = await store.claim_outbox("w1", clock.now, limit=10, per_lane=4, held=held)
    assert [r.kind for r in rows] == [OutboxKind.CARD_UPDATE] * 2
    held = {("C1", True): 4}
    [post] = await store.claim_outbox("w1", clock.now, limit=10, per_lane=4, held=held)
    assert post.kind == OutboxKind.CARD_POST


async def status_changes(board: Board, ref: TaskRef, statuses: list[TaskStatus]) -> None:
    for status in statuses:
        await board.update_task_status(ref, status, Actor.user(ALICE))


async def test_claiming_a_card_update_settles_the_later_ones_of_its_card_into_it(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, {"C1": 2})
    for card in await store.claim_outbox("w1", clock.now, limit=10):
        assert await store.mark_delivered(card.id, "w1", {"ts": "1.0"}, clock.now)
    ref, other = TaskRef("C1", 1), TaskRef("C1", 2)
    await status_changes(board, ref, [TaskStatus.IN_PROGRESS, TaskStatus.IN_REVIEW])
    await status_changes(board, other, [TaskStatus.IN_PROGRESS])
    await status_changes(board, ref, [TaskStatus.BLOCKED])

    rows = await store.claim_outbox("w1", clock.now, limit=10)
    first, second = sorted(rows, key=lambda r: r.task_id)
    later = [r for r in await store.list_outbox(1) if r.id > first.id]
    assert len(later) == 2
    assert first.coalesced == tuple(r.id for r in later)
    assert all(r.state == OutboxState.DELIVERED for r in later)
    assert all(r.result == {"coalesced_into": first.id} for r in later)
    assert (second.task_id, second.coalesced) == (2, ())  # another card's row is its own

    # A change committed after the claim gets a row of its own, claimed once this one is done.
    await status_changes(board, ref, [TaskStatus.TODO])
    assert await store.claim_outbox("w1", clock.now, limit=10) == []  # behind the one in flight
    assert await store.mark_delivered(first.id, "w1", {"ts": "1.0"}, clock.now)
    [own] = await store.claim_outbox("w1", clock.now, limit=10)
    assert (own.task_id, own.kind, own.coalesced) == (1, OutboxKind.CARD_UPDATE, ())


async def test_a_card_update_goes_past_an_open_post_of_its_thread_and_coalesces_the_later_ones(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)  # card post, directive, card update
    [card] = await store.claim_outbox("w1", clock.now, limit=10)
    await status_changes(board, TaskRef("C1", 1), [TaskStatus.IN_PROGRESS])
    assert await store.mark_delivered(card.id, "w1", {"ts": "1.0"}, clock.now, card=(1, "1.0"))
    directive, update = await store.claim_outbox("w1", clock.now, limit=10)
    assert directive.kind == OutboxKind.DIRECTIVE
    assert (update.kind, len(update.coalesced)) == (OutboxKind.CARD_UPDATE, 1)


async def test_release_hands_back_a_workers_rows_uncertain_only_where_a_call_was_under_way(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, {"C1": 2, "C2": 1})
    sent, queued, others = await store.claim_outbox("w1", clock.now, limit=2) + (
        await store.claim_outbox("w2", clock.now, limit=1)
    )
    assert await store.release_claims("w1", [sent.id]) == 2
    rows = {r.id: r for r in await store.list_outbox()}
    assert (rows[sent.id].state, rows[sent.id].uncertain, rows[sent.id].attempts) == (
        OutboxState.PENDING,
        True,
        1,
    )
    # Never sent: handed back as it was, its claim not counted as an attempt.
    assert (rows[queued.id].state, rows[queued.id].uncertain, rows[queued.id].attempts) == (
        OutboxState.PENDING,
        False,
        0,
    )
    assert (rows[others.id].state, rows[others.id].claimed_by) == (OutboxState.IN_FLIGHT, "w2")
    assert rows[sent.id].available_at == clock.now  # due at once
    again = await store.claim_outbox("w3", clock.now, limit=10)
    assert {r.id for r in again} == {sent.id, queued.id}
    assert await store.release_claims("w1", []) == 0


async def test_the_claim_reads_the_open_rows_index_on_sqlite(
    tmp_path: Path, sqlite_template: Path, clock: FakeClock
) -> None:
    path = tmp_path / "plan.db"
    shutil.copy(sqlite_template, path)
    params = candidate_params(clock.now, 4, [("C1", False), ("C2", True)], 20)
    expanded = CLAIM_CANDIDATES.compile(dialect=sqlite.dialect()).construct_expanded_state(params)
    values = [expanded.parameters[name] for name in expanded.positiontup or []]
    args = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    with sqlite3.connect(path) as db:
        plan = [str(row[3]) for row in db.execute(f"EXPLAIN QUERY PLAN {expanded.statement}", args)]
    reads = [line for line in plan if line.startswith(("SCAN", "SEARCH"))]
    assert "SCAN outbox USING INDEX ix_outbox_open_task" in reads, plan
    assert "SEARCH earlier USING INDEX ix_outbox_open_task (task_id=? AND id<?)" in reads, plan
    assert "SEARCH tasks USING INTEGER PRIMARY KEY (rowid=?)" in reads, plan
    assert "SEARCH later USING INDEX ix_outbox_open_task (task_id=? AND id>?)" in reads, plan


async def test_recording_a_delivery_claims_the_threads_next_row_in_the_same_transaction(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)  # card post, directive, card update
    await status_changes(board, TaskRef("C1", 1), [TaskStatus.IN_PROGRESS])  # one more update
    [card] = await store.claim_outbox("w1", clock.now, limit=10)
    held = {("C1", False): 0}
    recorded = await store.mark_delivered_and_claim_next(
        card.id, "w1", {"ts": "1.0"}, clock.now, (1, "1.0"), 4, held
    )
    assert recorded.settled
    directive = recorded.next_row
    assert directive is not None
    assert (directive.kind, directive.state, directive.claimed_by, directive.attempts) == (
        OutboxKind.DIRECTIVE,
        OutboxState.IN_FLIGHT,
        "w1",
        1,
    )
    async with store.read() as reader:
        task = await reader.get_task_by_id(1)
    assert task is not None
    assert task.card_ts == "1.0"
    recorded = await store.mark_delivered_and_claim_next(
        directive.id, "w1", {"ts": "2.0"}, clock.now, None, 4, held
    )
    # The directive held up no card update: those were claimable since the card went out.
    assert (recorded.settled, recorded.next_row) == (True, None)
    [update] = await store.claim_outbox("w1", clock.now, limit=10)
    assert (update.kind, len(update.coalesced)) == (OutboxKind.CARD_UPDATE, 1)
    recorded = await store.mark_delivered_and_claim_next(
        update.id, "w1", {"ts": "1.0"}, clock.now, None, 4, {}
    )
    assert (recorded.settled, recorded.next_row) == (True, None)  # the thread is done
    assert all(r.state == OutboxState.DELIVERED for r in await store.list_outbox())


async def test_a_threads_next_row_is_left_for_a_claim_when_its_lane_is_full_or_it_is_not_due(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    await core.work.post_update(TaskRef("C1", 1), "coder", "on it")  # written at clock.now
    [card] = await store.claim_outbox("w1", clock.now, limit=10)
    full = {("C1", False): 4}
    recorded = await store.mark_delivered_and_claim_next(
        card.id, "w1", {"ts": "1.0"}, clock.now, (1, "1.0"), 4, full
    )
    assert (recorded.settled, recorded.next_row) == (True, None)
    directive, update = await store.claim_outbox("w1", clock.now, limit=10)
    assert (directive.kind, update.kind) == (OutboxKind.DIRECTIVE, OutboxKind.CARD_UPDATE)
    earlier = clock.now - timedelta(seconds=1)
    recorded = await store.mark_delivered_and_claim_next(
        directive.id, "w1", {"ts": "2.0"}, earlier, None, 4, {}
    )
    assert (recorded.settled, recorded.next_row) == (True, None)
    [post] = await store.claim_outbox("w1", clock.now, limit=10)
    assert post.kind == OutboxKind.AGENT_POST


async def test_a_threads_next_row_waits_while_an_older_row_of_another_thread_waits_in_its_lane(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    """Cards a dead worker held, handed back, go out before the later posts of a busy thread
    in the same channel: the thread's next row is left to the claim, oldest first."""
    await seed(board, registry, tasks=2)
    assert len(await store.claim_outbox("dead", clock.now, limit=10)) == 2  # both cards
    await take_over_from_the_dead(store, clock, "w1")
    await core.work.post_update(TaskRef("C1", 1), "coder", "on it")  # the newest row
    [card] = await store.claim_outbox("w1", clock.now, limit=1)
    assert (card.task_id, card.kind, card.uncertain) == (1, OutboxKind.CARD_POST, True)
    lane = {("C1", False): 0}
    recorded = await store.mark_delivered_and_claim_next(
        card.id, "w1", {"ts": "1.0"}, clock.now, (1, "1.0"), 4, lane
    )
    # Its directive is older than the other card: the thread keeps its turn.
    directive = recorded.next_row
    assert directive is not None
    assert directive.kind == OutboxKind.DIRECTIVE
    recorded = await store.mark_delivered_and_claim_next(
        directive.id, "w1", {"ts": "2.0"}, clock.now, None, 4, lane
    )
    # Its agent post is newer than task 2's card, which waits: the post is left to the claim.
    assert (recorded.settled, recorded.next_row) == (True, None)
    claimed = await store.claim_outbox("w1", clock.now, limit=10)
    posts = [(r.task_id, r.kind) for r in claimed if r.kind != OutboxKind.CARD_UPDATE]
    assert posts == [(2, OutboxKind.CARD_POST), (1, OutboxKind.AGENT_POST)]  # oldest first


async def test_a_lost_claim_records_nothing_and_claims_nothing(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await seed(board, registry, tasks=1)
    [card] = await store.claim_outbox("w1", clock.now, limit=10)
    recorded = await store.mark_delivered_and_claim_next(
        card.id, "w2", {"ts": "1.0"}, clock.now, (1, "1.0"), 4, {}
    )
    assert (recorded.settled, recorded.next_row) == (False, None)
    rows = await store.list_outbox()
    assert [r.state for r in rows] == [
        OutboxState.IN_FLIGHT,
        OutboxState.PENDING,
        OutboxState.PENDING,
    ]
    async with store.read() as reader:
        task = await reader.get_task_by_id(1)
    assert task is not None
    assert task.card_ts is None
