"""Claiming and settling outbox rows: safe with several workers, ordered per task thread."""

from datetime import datetime
from typing import Any

from sqlalchemy import Row, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.outbox import OutboxKind, OutboxRow, OutboxState
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
    )


async def claim_outbox(
    db: AsyncConnection, worker: str, now: datetime, claim_until: datetime, limit: int
) -> list[OutboxRow]:
    """Claims up to ``limit`` rows, each the oldest undelivered row of its task's thread.

    A row is claimable when it is due and either pending or its previous claim has expired.
    PostgreSQL workers skip rows another worker has locked; SQLite has one writer at a time.
    """
    earlier = outbox.alias("earlier")
    has_earlier_undelivered = (
        select(earlier.c.id)
        .where(
            earlier.c.task_id == outbox.c.task_id,
            earlier.c.id < outbox.c.id,
            earlier.c.state != _DELIVERED,
        )
        .exists()
    )
    candidates = (
        select(outbox.c.id)
        .where(
            outbox.c.state != _DELIVERED,
            or_(outbox.c.state == OutboxState.PENDING.value, outbox.c.claim_expires_at < now),
            outbox.c.available_at <= now,
            ~has_earlier_undelivered,
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
            # A row still in flight when its claim expired may have been delivered.
            uncertain=or_(outbox.c.uncertain, outbox.c.state == OutboxState.IN_FLIGHT.value),
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
) -> bool:
    """Hands the row back for another try at ``available_at``; it is never dropped.

    ``uncertain`` marks a failure after which the platform may have acted anyway.
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
        )
    )
    return (await db.execute(query)).rowcount == 1


async def list_outbox(db: AsyncConnection, task_id: int | None = None) -> list[OutboxRow]:
    """Every outbox row (of one task when given), in delivery order."""
    query = select(outbox).order_by(outbox.c.id)
    if task_id is not None:
        query = query.where(outbox.c.task_id == task_id)
    return [outbox_from_row(row) for row in await db.execute(query)]
