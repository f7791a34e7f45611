"""Rate budgets: token buckets in ``rate_budgets``, one row per name, taken in one transaction.

The row is created full on first use, then locked (``FOR UPDATE`` on PostgreSQL; on SQLite the
writer's ``BEGIN IMMEDIATE`` already makes the transaction the only writer), refilled for the
time elapsed and, when a whole token is there, written back with one token fewer. Replicas
racing for the last token therefore get it exactly once.
"""

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.budget import Bucket, Rate
from store.dialect import dialect_insert
from store.schema import rate_budgets


async def take_token(db: AsyncConnection, name: str, rate: Rate, now: datetime) -> float | None:
    """Takes one token from bucket ``name``: None when taken, else the seconds until one is
    due (and nothing changes). Runs inside the caller's write transaction."""
    create = (
        dialect_insert(db, rate_budgets)
        .values(name=name, tokens=rate.burst, updated_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    await db.execute(create)
    locked = (
        select(rate_budgets.c.tokens, rate_budgets.c.updated_at)
        .where(rate_budgets.c.name == name)
        .with_for_update()
    )
    stored = (await db.execute(locked)).one()
    bucket = Bucket(float(stored.tokens), stored.updated_at).refilled(now, rate)
    wait = bucket.wait_for_token(rate)
    if wait is not None:
        return wait
    taken = bucket.taken()
    await db.execute(
        update(rate_budgets)
        .where(rate_budgets.c.name == name)
        .values(tokens=taken.tokens, updated_at=taken.updated_at)
    )
    return None
