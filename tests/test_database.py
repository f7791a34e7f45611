"""SQLite transactions as the store opens them: IMMEDIATE writers, read-only readers, and
connections that go back to the pool clean."""

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from store import database
from store.database import create_engine, is_transient, read_transaction, write_transaction


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A file database with one pooled connection, so every transaction reuses it."""
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", pool_size=1, max_overflow=0)
    async with write_transaction(engine) as connection:
        await connection.execute(text("CREATE TABLE notes (body TEXT)"))
    yield engine
    await engine.dispose()


async def bodies(engine: AsyncEngine) -> list[str]:
    async with read_transaction(engine) as connection:
        return list((await connection.execute(text("SELECT body FROM notes"))).scalars())


async def insert_then_fail(engine: AsyncEngine) -> None:
    async with write_transaction(engine) as connection:
        await connection.execute(text("INSERT INTO notes VALUES ('lost')"))
        raise RuntimeError("the use case failed half-way")


async def insert(engine: AsyncEngine, body: str) -> None:
    async with write_transaction(engine) as connection:
        await connection.execute(text("INSERT INTO notes VALUES (:body)"), {"body": body})


async def test_a_write_transaction_that_fails_leaves_nothing_and_the_next_one_begins(
    engine: AsyncEngine,
) -> None:
    with pytest.raises(RuntimeError):
        await insert_then_fail(engine)
    async with write_transaction(engine) as connection:
        await connection.execute(text("INSERT INTO notes VALUES ('kept')"))
    assert await bodies(engine) == ["kept"]


async def test_a_connection_returned_with_its_transaction_open_is_rolled_back(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The pool's reset: SQLAlchemy's own transaction is not open, the driver's is."""
    connection = await engine.connect()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    await driver.execute("BEGIN IMMEDIATE")
    await driver.execute("INSERT INTO notes VALUES ('left open')")
    await connection.close()
    assert await bodies(engine) == []
    other = sqlite3.connect(tmp_path / "db.sqlite", timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")  # raises "database is locked" if the lock were held
        other.rollback()
    finally:
        other.close()


async def test_a_committed_write_is_seen_by_the_next_read(engine: AsyncEngine) -> None:
    async with write_transaction(engine) as connection:
        await connection.execute(text("INSERT INTO notes VALUES ('one')"))
    async with write_transaction(engine) as connection:
        await connection.execute(text("INSERT INTO notes VALUES ('two')"))
    assert await bodies(engine) == ["one", "two"]


async def test_a_writer_that_cannot_get_the_lock_raises_a_transient_operational_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "busy.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE notes (body TEXT)")
    holder.execute("BEGIN IMMEDIATE")
    engine = create_engine(f"sqlite:///{path}")
    try:
        with pytest.raises(OperationalError) as raised:
            await insert(engine, "x")
        assert "database is locked" in str(raised.value)
        assert is_transient(raised.value)
    finally:
        holder.rollback()
        holder.close()
        await engine.dispose()
    assert await bodies_at(path) == []


async def bodies_at(path: Path) -> list[str]:
    with sqlite3.connect(path) as check:
        return [row[0] for row in check.execute("SELECT body FROM notes")]


async def test_a_read_transaction_takes_no_write_lock(engine: AsyncEngine, tmp_path: Path) -> None:
    async with read_transaction(engine) as connection:
        await connection.execute(text("SELECT count(*) FROM notes"))
        other = sqlite3.connect(tmp_path / "db.sqlite", timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO notes VALUES ('while reading')")
            other.execute("COMMIT")
        finally:
            other.close()
    assert await bodies(engine) == ["while reading"]


async def test_each_statement_reports_what_sqlalchemy_reads_after_it(engine: AsyncEngine) -> None:
    """The one-trip cursor (``store.sqlite_driver``): rowid, rowcount, rows and their names."""
    async with write_transaction(engine) as connection:
        inserted = await connection.execute(text("INSERT INTO notes VALUES ('a')"))
        assert inserted.lastrowid == 1
        await connection.execute(
            text("INSERT INTO notes VALUES (:body)"), [{"body": "b"}, {"body": "c"}]
        )
        updated = await connection.execute(text("UPDATE notes SET body = body || '!'"))
        assert updated.rowcount == 3
        returned = await connection.execute(
            text("UPDATE notes SET body = 'z' WHERE body = 'b!' RETURNING rowid, body")
        )
        assert [tuple(row) for row in returned] == [(2, "z")]
    async with read_transaction(engine) as connection:
        result = await connection.execute(text("SELECT rowid AS n, body FROM notes ORDER BY n"))
        assert list(result.keys()) == ["n", "body"]
        assert [tuple(row) for row in result] == [(1, "a!"), (2, "z"), (3, "c!")]


async def test_a_statement_that_breaks_a_constraint_raises_and_rolls_back(
    engine: AsyncEngine,
) -> None:
    async with write_transaction(engine) as connection:
        await connection.execute(text("CREATE UNIQUE INDEX one_body ON notes (body)"))
    with pytest.raises(IntegrityError):
        await insert_twice(engine)
    assert await bodies(engine) == []
    await insert(engine, "after")
    assert await bodies(engine) == ["after"]


async def insert_twice(engine: AsyncEngine) -> None:
    async with write_transaction(engine) as connection:
        await connection.execute(text("INSERT INTO notes VALUES ('same')"))
        await connection.execute(text("INSERT INTO notes VALUES ('same')"))


async def test_a_write_cancelled_at_any_step_leaves_the_connection_usable(
    engine: AsyncEngine,
) -> None:
    """However far the cancelled transaction got (its BEGIN still in aiosqlite's thread, the
    insert done, the commit on the way), the one pooled connection is handed back with no
    transaction open, and what was not committed is not there."""
    for turns in range(12):
        write = asyncio.create_task(insert(engine, f"cancelled after {turns} turns"))
        for _ in range(turns):
            await asyncio.sleep(0)
        write.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await write
        await insert(engine, f"next after {turns}")
    kept = await bodies(engine)
    assert [b for b in kept if b.startswith("next")] == [f"next after {n}" for n in range(12)]
