"""The admins' dead-letter use case on both backends: review, retry and drop, each recorded."""

import pytest

from bot.board import Board
from bot.dead_letters import DeadLetters, parse_outbox_id
from bot.errors import IllegalTransition, InvalidInput, NotFound
from bot.outbox import (
    DROPPABLE_STATES,
    RETRYABLE_STATES,
    TRANSITIONS,
    OutboxKind,
    OutboxRow,
    OutboxState,
)
from bot.registry import AgentRegistry
from bot.root import Core
from bot.signal import Queued
from bot.task import Actor, EventKind, NewEvent
from store.repository import SqlStore
from tests.conftest import FakeClock

ADMIN = Actor.user("UADMIN01")


async def dead_directive(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> OutboxRow:
    """A task whose card was delivered and whose directive Slack refused for good."""
    await registry.add_agent("coder")
    task = await board.create_task("C1", "t", Actor.user("U1"))
    [card] = await store.claim_outbox("w1", clock.now, limit=1)
    assert await store.mark_delivered(card.id, "w1", {"ts": "1.0"}, clock.now, card=(1, "1.0"))
    await board.assign_task(task.ref, "coder", "U1")
    [directive] = await store.claim_outbox("w1", clock.now, limit=1)
    event = NewEvent(1, EventKind.OUTBOX_DEAD, Actor.system("outbox"), clock.now, {})
    assert await store.mark_dead(directive.id, "w1", "not_in_channel", event)
    return directive


async def test_a_review_lists_dead_rows_and_the_rows_still_waiting_oldest_first(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    directive = await dead_directive(board, registry, store, clock)
    clock.advance(90)
    review = await core.dead_letters.review_outbox()
    assert [(r.id, r.kind, r.last_error) for r in review.dead] == [
        (directive.id, OutboxKind.DIRECTIVE, "not_in_channel")
    ]
    assert [r.kind for r in review.waiting] == [OutboxKind.CARD_UPDATE]
    assert (review.dead_total, review.waiting_total, review.now) == (1, 1, clock.now)
    limited = await core.dead_letters.review_outbox(limit=0)
    assert (limited.dead, limited.waiting, limited.dead_total) == ([], [], 1)


async def test_retrying_a_dead_row_makes_it_pending_wakes_delivery_and_records_the_admin(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    directive = await dead_directive(board, registry, store, clock)
    woken: list[frozenset[Queued]] = []
    dead_letters = DeadLetters(store, clock, notify=woken.append)
    clock.advance(60)
    retried = await dead_letters.retry_outbox_row(directive.id, ADMIN)
    assert (retried.state, retried.available_at) == (OutboxState.PENDING, clock.now)
    assert woken == [frozenset({Queued.OUTBOX})]
    async with store.read() as reader:
        [event] = [e for e in await reader.list_events(1) if e.kind == EventKind.OUTBOX_RETRIED]
    assert (event.actor, event.at) == (ADMIN, clock.now)
    assert event.data == {
        "outbox_id": directive.id,
        "kind": "directive",
        "state": "dead",
        "error": "not_in_channel",
    }
    with pytest.raises(IllegalTransition, match=r"waiting to be sent already\. Only a dead row"):
        await dead_letters.retry_outbox_row(directive.id, ADMIN)


async def test_dropping_a_row_settles_it_unsent_and_records_the_admin(
    core: Core, board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    directive = await dead_directive(board, registry, store, clock)
    [update] = (await core.dead_letters.review_outbox()).waiting
    woken: list[frozenset[Queued]] = []
    dead_letters = DeadLetters(store, clock, notify=woken.append)
    for row in (directive, update):  # dead, then pending
        dropped = await dead_letters.drop_outbox_row(row.id, ADMIN)
        assert dropped.state == OutboxState.DROPPED
    assert woken == [frozenset({Queued.OUTBOX})] * 2  # what waited behind it may go now
    async with store.read() as reader:
        events = [e for e in await reader.list_events(1) if e.kind == EventKind.OUTBOX_DROPPED]
    assert [(e.actor, e.data["outbox_id"], e.data["state"]) for e in events] == [
        (ADMIN, directive.id, "dead"),
        (ADMIN, update.id, "pending"),
    ]
    assert await store.claim_outbox("w1", clock.now, limit=10) == []
    with pytest.raises(IllegalTransition, match="it was dropped and is never sent"):
        await core.dead_letters.retry_outbox_row(directive.id, ADMIN)


async def test_rows_that_are_delivered_in_flight_or_missing_are_refused_readably(
    core: Core, board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await board.create_task("C1", "t", Actor.user("U1"))
    await board.create_task("C1", "u", Actor.user("U1"))
    [first, second] = await store.claim_outbox("w1", clock.now, limit=2)
    assert await store.mark_delivered(first.id, "w1", {"ts": "1.0"}, clock.now)
    with pytest.raises(
        IllegalTransition, match=f"row {first.id} cannot be retried: it was delivered"
    ):
        await core.dead_letters.retry_outbox_row(first.id, ADMIN)
    with pytest.raises(IllegalTransition, match="cannot be dropped: it is being sent right now"):
        await core.dead_letters.drop_outbox_row(second.id, ADMIN)
    with pytest.raises(NotFound, match="There is no outbox row 999"):
        await core.dead_letters.drop_outbox_row(999, ADMIN)
    async with store.read() as reader:
        kinds = {e.kind for t in (1, 2) for e in await reader.list_events(t)}
    assert kinds == {EventKind.CREATED}


@pytest.mark.parametrize("text", ["abc", "-1", "0", "1.5", "", "99999999999999999999"])
def test_an_outbox_id_must_be_a_positive_whole_number(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not an outbox row id"):
        parse_outbox_id(text)


def test_an_outbox_id_may_be_written_with_a_hash() -> None:
    assert (parse_outbox_id("12"), parse_outbox_id("#12")) == (12, 12)


def test_every_admin_move_is_in_the_transition_table() -> None:
    assert all(OutboxState.PENDING in TRANSITIONS[s] for s in RETRYABLE_STATES)
    assert all(OutboxState.DROPPED in TRANSITIONS[s] for s in DROPPABLE_STATES)
    assert TRANSITIONS[OutboxState.DELIVERED] == TRANSITIONS[OutboxState.DROPPED] == frozenset()
