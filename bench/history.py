"""Gives every benchmark task a history: appended events and delivered outbox rows.

A board with a million tasks has at least as many events and outbox rows, and the tick inserts
into both tables: an outbox key is random, so each insert lands on its own leaf of the unique
index, and the cost of that grows with the table. Loading one event and one outbox row per task
per round keeps those indexes the size they would be, without replaying the board's past.
"""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


def _json(dialect: str, literal: str) -> str:
    return f"CAST('{literal}' AS JSONB)" if dialect == "postgresql" else f"'{literal}'"


def _random_key(dialect: str, salt: int) -> str:
    """A 32-hex-digit key scattered like ``uuid4().hex``."""
    if dialect == "postgresql":
        return f"md5(CAST(id AS TEXT) || '-{salt}')"
    return "lower(hex(randomblob(16)))"


def _events_sql(dialect: str) -> str:
    return f"""
    INSERT INTO task_events (task_id, kind, actor, at, data)
    SELECT id, 'created', 'user:' || created_by, created_at, {_json(dialect, "{}")} FROM tasks
    """  # noqa: S608 - SQL from constant fragments; values go in as binds


def _outbox_sql(dialect: str, salt: int) -> str:
    return f"""
    INSERT INTO outbox (key, task_id, kind, payload, state, attempts, available_at, created_at,
        delivered_at, result)
    SELECT {_random_key(dialect, salt)}, id, 'card_update', {_json(dialect, "{}")}, 'delivered', 1,
        created_at, created_at, created_at, {_json(dialect, "{}")}
    FROM tasks
    """  # noqa: S608 - SQL from constant fragments; values go in as binds


async def load_history(engine: AsyncEngine, rounds: int) -> None:
    """Appends ``rounds`` events and delivered outbox rows to every task."""
    dialect = engine.dialect.name
    for salt in range(rounds):
        async with engine.begin() as connection:
            await connection.execute(text(_events_sql(dialect)))
            await connection.execute(text(_outbox_sql(dialect, salt)))
