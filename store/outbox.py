"""Claiming and settling outbox rows: safe with several workers, ordered per task thread.

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

_DELIVERED = OutboxState.DELIVERED.value


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


def _in_states(table: FromClause, states: Collection[OutboxState]) -> ColumnElement[bool]:
    """``state IN (...)`` (or ``state = ...``) spelled with literals, as the partial indexes
    are, so that SQLite's planner can prove the query implies an index's WHERE (it cannot with
    bound parameters)."""
    literals: list[ColumnElement[str]] = [literal_column(f"'{s.value}'") for s in states]
    return table.c.state == literals[0] if len(literals) == 1 else table.c.state.in_(literals)


def _is_open(table: FromClause) -> ColumnElement[bool]:
    """The row may still be sent, and so holds up the later rows of its thread."""
    return _in_states(table, OPEN_STATES)


async def claim_outbox(
    db: AsyncConnection, worker: str, now: datetime, claim_until: datetime, limit: int
) -> list[OutboxRow]:
    """Claims up to ``limit`` rows, each the oldest open row of its task's thread.

    A row is claimable when it is due and pending. A row stays in flight for as long as its
    worker is alive; the takeover (``store.workers``) reopens the rows of a worker presumed dead
    as uncertain. Dead, dropped and delivered rows are passed over, so they never hold up a
    thread.
    PostgreSQL workers skip rows another worker has locked; SQLite has one writer at a time.
    """
    earlier = outbox.alias("earlier")
    has_earlier_open = (
        select(earlier.c.id)
        .where(
            earlier.c.task_id == outbox.c.task_id,
            earlier.c.id < outbox.c.id,
            _is_open(earlier),
        )
        .exists()
    )
    candidates = (
        select(outbox.c.id)
        .where(
            _is_open(outbox),  # as the partial index says, so SQLite's planner can use it
            outbox.c.state == OutboxState.PENDING.value,
            outbox.c.available_at <= now,
            ~has_earlier_open,
        )
        .order_by(outbox.c.id)
        .limit(limit)
    )
    if db.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True, of=outbox)
    ids = list((await db.execute(candidates)).scalars())
    if not ids:
        return []
    claim = (
        update(outbox)
        .where(outbox.c.id.in_(ids))
        .values(
            state=OutboxState.IN_FLIGHT.value,
            claimed_by=worker,
            claim_expires_at=claim_until,
            attempts=outbox.c.attempts + 1,
        )
        .returning(*outbox.c)
    )
    rows = [outbox_from_row(row) for row in await db.execute(claim)]
    return sorted(rows, key=lambda row: row.id)


def _held_by(row_id: int, worker: str) -> Any:
    return (
        (outbox.c.id == row_id)
        & (outbox.c.claimed_by == worker)
        & (outbox.c.state == OutboxState.IN_FLIGHT.value)
    )


async def mark_delivered(
    db: AsyncConnection, row_id: int, worker: str, result: dict[str, object], at: datetime
) -> bool:
    """Records delivery, only while ``worker`` still holds the row's claim."""
    query = (
        update(outbox)
        .where(_held_by(row_id, worker))
        .values(
            state=_DELIVERED, delivered_at=at, result=result, claim_expires_at=None, uncertain=False
        )
    )
    return (await db.execute(query)).rowcount == 1


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
        dead = _in_states(outbox, [OutboxState.DEAD])
        query = select(outbox).where(dead).order_by(outbox.c.id).limit(limit)
        return [outbox_from_row(row) for row in await self._db.execute(query)]

    async def list_open_outbox(self, limit: int) -> list[OutboxRow]:
        """Rows still to be sent (pending or in flight), oldest first."""
        query = select(outbox).where(_is_open(outbox)).order_by(outbox.c.id).limit(limit)
        return [outbox_from_row(row) for row in await self._db.execute(query)]

    async def count_outbox(self) -> dict[OutboxState, int]:
        """How many rows are open and how many dead; settled rows are not counted. (One query
        per partial index, so the count follows the rows counted, not the table.)"""
        found: dict[OutboxState, int] = {}
        for states in (OPEN_STATES, [OutboxState.DEAD]):
            query = (
                select(outbox.c.state, func.count())
                .where(_in_states(outbox, states))
                .group_by(outbox.c.state)
            )
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
