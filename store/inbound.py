"""Inbound event ids: which Slack events were already processed, each write its own transaction."""

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncConnection

from store.dialect import dialect_insert
from store.schema import inbound_event_ids


async def remember(connection: AsyncConnection, event_id: str, at: datetime) -> bool:
    """Records ``event_id``; False when it was recorded before."""
    query = (
        dialect_insert(connection, inbound_event_ids)
        .values(event_id=event_id, received_at=at)
        .on_conflict_do_nothing(index_elements=["event_id"])
    )
    return bool((await connection.execute(query)).rowcount == 1)


async def forget(connection: AsyncConnection, event_id: str) -> None:
    """Drops ``event_id``, so Slack's retry of a failed event is processed."""
    await connection.execute(
        delete(inbound_event_ids).where(inbound_event_ids.c.event_id == event_id)
    )


async def prune(connection: AsyncConnection, before: datetime) -> int:
    """Drops the ids received before ``before``; returns how many."""
    query = delete(inbound_event_ids).where(inbound_event_ids.c.received_at < before)
    return int((await connection.execute(query)).rowcount)
