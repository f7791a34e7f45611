"""Migrations from empty on both backends produce exactly the schema the code queries."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.board import Board
from bot.task import Actor
from store.database import create_engine
from store.migrate import current_revision, downgrade, head_revision, upgrade
from store.schema import metadata


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": False})
    return list(compare_metadata(context, metadata))


async def test_migrating_an_empty_database_reaches_head_and_matches_the_table_definitions(
    database_url: str, engine: AsyncEngine
) -> None:
    assert await current_revision(engine) == head_revision()
    async with engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"tasks", "task_events", "task_messages", "outbox", "agents", "agent_secrets"} <= tables


async def test_upgrading_twice_is_a_no_op(engine: AsyncEngine) -> None:
    await upgrade(engine)
    assert await current_revision(engine) == head_revision()


async def test_the_schema_can_be_rolled_back_to_empty_and_rebuilt(engine: AsyncEngine) -> None:
    await downgrade(engine, "base")
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert tables <= {"alembic_version"}
    await upgrade(engine)
    assert await current_revision(engine) == head_revision()


async def test_a_brand_new_sqlite_file_is_created_and_migrated(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/fresh.db")
    try:
        assert await current_revision(engine) is None
        await upgrade(engine)
        async with engine.connect() as conn:
            journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
            foreign_keys = (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one()
        assert (journal, foreign_keys) == ("wal", 1)
    finally:
        await engine.dispose()


async def test_the_database_refuses_to_rewrite_or_delete_a_task_event(
    engine: AsyncEngine, board: Board
) -> None:
    task = await board.create_task("C1", "t", Actor.user("U1"))
    for statement in ("UPDATE task_events SET kind = 'forged'", "DELETE FROM task_events"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    async with engine.connect() as conn:
        kinds = (await conn.execute(text("SELECT kind FROM task_events"))).scalars().all()
    assert kinds == ["created"]
    assert task.id == 1


async def test_upgrading_to_0004_keeps_the_event_ids_already_seen(engine: AsyncEngine) -> None:
    await downgrade(engine, "0003")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO inbound_deliveries (key, received_at) "
                "VALUES ('event:Ev1', '2026-01-05 09:00:00+00:00')"
            )
        )
    await upgrade(engine)
    async with engine.connect() as conn:
        ids = (await conn.execute(text("SELECT event_id FROM inbound_event_ids"))).scalars().all()
    assert ids == ["Ev1"]
