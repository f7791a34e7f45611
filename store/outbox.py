"""Settling outbox rows: safe with several workers, ordered per task thread (the claim is in
``store.outbox_claims``).

Every move of a row is one guarded UPDATE: a worker's only while it holds the row's claim, an
admin's only from the states ``bot.outbox`` allows. Only open rows (pending or in flight) hold
up the later rows of their thread, so a dead row never blocks the rest of it.
"""

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Row,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.outbox import (
    DROPPABLE_STATES,
    OPEN_STATES,
    RETRYABLE_STATES,
    OutboxKind,
    OutboxRow,
    OutboxState,
)
from bot.signal import Queued
from store.schema import outbox

DELIVERED = OutboxState.DELIVERED.value


def outbox_from_row(row: Row[Any]) -> OutboxRow:
    """Maps an ``outbox`` row to an OutboxRow."""
    m = row._mapping
    return OutboxRow(
        id=m["id"],
        key=m["key"],
        task_id=m["task_id"],
        kind=OutboxKind(m["kind"]),
        payload=m["payload"],
        state=OutboxState(m["state"]),
        attempts=m["attempts"],
        available_at=m["available_at"],
        created_at=m["created_at"],
        claimed_by=m["claimed_by"],
        claim_expires_at=m["claim_expires_at"],
        delivered_at=m["delivered_at"],
        result=m["result"],
        last_error=m["last_error"],
        uncertain=bool(m["uncertain"]),
        shortened=bool(m["shortened"]),
    )


def in_states(table: FromClause, states: Collection[OutboxState]) -> ColumnElement[bool]:
    """``state IN (...)`` (or ``state = ...``) spelled with literals, as the partial indexes
    are, so that SQLite's planner can prove the query implies an index's WHERE (it cannot with
    bound parameters)."""
    literals: list[ColumnElement[str]] = [literal_column(f"'{s.value}'") for s in states]
    return table.c.state == literals[0] if len(literals) == 1 else table.c.state.in_(literals)


def is_open(table: FromClause) -> ColumnElement[bool]:
    """The row may still be sent, and so holds up the later rows of its thread."""
    return in_states(table, OPEN_STATES)


async def release_claims(db: AsyncConnection, worker: str, uncertain_ids: Collection[int]) -> int:
    """Hands every row ``worker`` holds back as pending, due as before; returns how many.

    Rows in ``uncertain_ids`` (their call was under way, or its result was never recorded) are
    marked uncertain, to be looked up before any re-post. The others were never sent, so their
    claim does not count as an attempt.
    """
    under_way = outbox.c.id.in_(sorted(uncertain_ids))
    query = (
        update(outbox)
        .where(
            is_open(outbox),
            outbox.c.state == OutboxState.IN_FLIGHT.value,
            outbox.c.claimed_by == worker,
        )
        .values(
            state=OutboxState.PENDING.value,
            claimed_by=None,
            claim_expires_at=None,
            uncertain=or_(outbox.c.uncertain, under_way),
            attempts=case((under_way, outbox.c.attempts), else_=outbox.c.attempts - 1),
        )
    )
    return int((await db.execute(query)).rowcount)


def _held_by(row_id: int, worker: str) -> Any:
    return (
        (outbox.c.id == row_id)
        & (outbox.c.claimed_by == worker)
        & (outbox.c.state == OutboxState.IN_FLIGHT.value)
    )


async def mark_delivered(
    db: AsyncConnection, row_id: int, worker: str, result: dict[str, object], at: datetime
) -> int | None:
    """Records delivery, only while ``worker`` still holds the row's claim; returns the row's
    task id, or None when the claim was lost."""
    query = (
        update(outbox)
        .where(_held_by(row_id, worker))
        .values(
            state=DELIVERED, delivered_at=at, result=result, claim_expires_at=None, uncertain=False
        )
        .returning(outbox.c.task_id)
    )
    task_id = (await db.execute(query)).scalar_one_or_none()
    return None if task_id is None else int(task_id)


async def release_for_retry(
    db: AsyncConnection,
    row_id: int,
    worker: str,
    available_at: datetime,
    error: str,
    uncertain: bool = False,
    shortened: bool = False,
) -> bool:
    """Hands the row back for another try at ``available_at``, only while ``worker`` holds it.

    ``uncertain`` marks a failure after which the platform may have acted anyway; ``shortened``
    makes every later attempt send a shortened text. Neither is ever cleared here.
    """
    query = (
        update(outbox)
        .where(_held_by(row_id, worker))
        .values(
            state=OutboxState.PENDING.value,
            available_at=available_at,
            claimed_by=None,
            claim_expires_at=None,
            last_error=error[:2000],
            uncertain=or_(outbox.c.uncertain, literal(uncertain)),
            shortened=or_(outbox.c.shortened, literal(shortened)),
        )
    )
    return (await db.execute(query)).rowcount == 1


async def mark_dead(db: AsyncConnection, row_id: int, worker: str, error: str) -> bool:
    """Parks the row as dead with the platform's ``error``, only while ``worker`` holds it.

    The row keeps ``uncertain``: an earlier attempt may still have reached the platform.
    """
    query = (
        update(outbox)
        .where(_held_by(row_id, worker))
        .values(
            state=OutboxState.DEAD.value,
            claimed_by=None,
            claim_expires_at=None,
            last_error=error[:2000],
        )
    )
    return (await db.execute(query)).rowcount == 1


async def list_outbox(db: AsyncConnection, task_id: int | None = None) -> list[OutboxRow]:
    """Every outbox row (of one task when given), in delivery order."""
    query = select(outbox).order_by(outbox.c.id)
    if task_id is not None:
        query = query.where(outbox.c.task_id == task_id)
    return [outbox_from_row(row) for row in await db.execute(query)]


class OutboxReads:
    """What admins read about the outbox; mixed into the reader."""

    _db: AsyncConnection

    async def get_outbox_row(self, row_id: int) -> OutboxRow | None:
        query = select(outbox).where(outbox.c.id == row_id)
        row = (await self._db.execute(query)).one_or_none()
        return outbox_from_row(row) if row is not None else None

    async def list_dead_outbox(self, limit: int) -> list[OutboxRow]:
        """Dead rows, oldest first."""
        dead = in_states(outbox, [OutboxState.DEAD])
        query = select(outbox).where(dead).order_by(outbox.c.id).limit(limit)
        return [outbox_from_row(row) for row in await self._db.execute(query)]

    async def list_open_outbox(
        self, limit: int, task_ids: Collection[int] | None = None
    ) -> list[OutboxRow]:
        """Rows still to be sent (pending or in flight), oldest first; only those of
        ``task_ids`` when given."""
        query = select(outbox).where(is_open(outbox)).order_by(outbox.c.id).limit(limit)
        if task_ids is not None:
            query = query.where(outbox.c.task_id.in_(list(task_ids)))
        return [outbox_from_row(row) for row in await self._db.execute(query)]

    async def count_outbox(self, task_ids: Collection[int] | None = None) -> dict[OutboxState, int]:
        """How many rows are open and how many dead, of ``task_ids`` when given; settled rows
        are not counted. (One query per partial index, so the count follows the rows counted,
        not the table.)"""
        found: dict[OutboxState, int] = {}
        for states in (OPEN_STATES, [OutboxState.DEAD]):
            query = (
                select(outbox.c.state, func.count())
                .where(in_states(outbox, states))
                .group_by(outbox.c.state)
            )
            if task_ids is not None:
                query = query.where(outbox.c.task_id.in_(list(task_ids)))
            found |= {OutboxState(state): int(n) for state, n in await self._db.execute(query)}
        return {state: found.get(state, 0) for state in (*OPEN_STATES, OutboxState.DEAD)}


class OutboxReviewWrites:
    """An admin's moves of one row; mixed into the unit of work. Each returns the row as
    moved, or None when it was not in a state the move starts from."""

    _db: AsyncConnection
    queued: set[Queued]

    async def retry_outbox_row(self, row_id: int, at: datetime) -> OutboxRow | None:
        """Dead to pending, due at ``at``."""
        query = (
            update(outbox)
            .where(outbox.c.id == row_id, outbox.c.state.in_(_values(RETRYABLE_STATES)))
            .values(state=OutboxState.PENDING.value, available_at=at)
            .returning(*outbox.c)
        )
        row = (await self._db.execute(query)).one_or_none()
        if row is None:
            return None
        self.queued.add(Queued.OUTBOX)
        return outbox_from_row(row)

    async def drop_outbox_row(self, row_id: int) -> OutboxRow | None:
        """Dead or pending to dropped: never sent (and no longer holding up its thread)."""
        query = (
            update(outbox)
            .where(outbox.c.id == row_id, outbox.c.state.in_(_values(DROPPABLE_STATES)))
            .values(state=OutboxState.DROPPED.value, claimed_by=None, claim_expires_at=None)
            .returning(*outbox.c)
        )
        row = (await self._db.execute(query)).one_or_none()
        if row is None:
            return None
        self.queued.add(Queued.OUTBOX)  # the thread's next row may be due now
        return outbox_from_row(row)


def _values(states: Collection[OutboxState]) -> list[str]:
    return sorted(state.value for state in states)
