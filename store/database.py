"""Engines and transactions: SQLite (WAL, BEGIN IMMEDIATE) or PostgreSQL (asyncpg)."""

import asyncio
import sqlite3
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SqlAlchemyTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from bot.errors import ConfigurationError
from store import sqlite_driver

#: Execution option that marks a connection's transactions as read-only on SQLite.
_READ_ONLY = "threadwork_read_only"
SQLITE_BUSY_TIMEOUT_MS = 10_000


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` says the database was unreachable, busy or timed out (worth retrying),
    rather than that the statement itself was wrong."""
    if isinstance(error, OperationalError | InterfaceError | SqlAlchemyTimeout | OSError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def async_url(database_url: str) -> URL:
    """Maps the URL people write (``sqlite:///x.db``, ``postgresql://...``) to an async driver."""
    try:
        url = make_url(database_url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError and ValueError alike here.
        raise ConfigurationError(f"DATABASE_URL is not a database URL: {exc}") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername=f"sqlite+{sqlite_driver.DRIVER}")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+asyncpg")
    raise ConfigurationError(
        f"DATABASE_URL uses `{url.drivername}`; threadwork supports sqlite:/// and postgresql://."
    )


def create_engine(database_url: str, **options: Any) -> AsyncEngine:
    """Builds the engine for ``database_url``; the caller owns it and disposes of it."""
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **options,
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(url, pool_pre_ping=True, **options)


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Turns on WAL, the busy timeout and foreign keys, and makes writers begin IMMEDIATE.

    pysqlite's own transaction handling is switched off so that SQLAlchemy's ``begin`` hook
    decides how each transaction starts: a deferred BEGIN lets two writers both read and then
    fail to upgrade their lock ("database is locked") no matter the busy timeout.

    Every call into aiosqlite is a trip to its thread and back through the event loop, and a
    writer holds this process's write lock across each one (``store.sqlite_driver``). A
    one-statement transaction takes four: BEGIN, the statement, COMMIT, and the rollback with
    which the pool hands the connection back. SQLAlchemy's own adapter took eight; BEGIN, here,
    goes to the driver in one call rather than through a cursor (open, execute, close). The
    rollback stays although the commit has ended the transaction: it queues behind whatever the
    thread still has to run, so a transaction whose task was cancelled while its BEGIN was on
    the way is still ended before the connection is used again.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        _begin(connection, "BEGIN" if read_only else "BEGIN IMMEDIATE")


def _begin(connection: Connection, statement: str) -> None:
    """Runs ``statement`` on aiosqlite's connection in one trip to its thread, raising what
    SQLAlchemy would have raised for it (a busy database is an ``OperationalError``)."""
    driver = connection.connection.driver_connection
    assert driver is not None, "a connection that begins a transaction is open"
    try:
        await_only(driver.execute(statement))
    except sqlite3.OperationalError as exc:
        raise OperationalError(statement, None, exc) from exc


_writer_locks: "weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock]" = weakref.WeakKeyDictionary()


def _writer_lock(engine: AsyncEngine) -> asyncio.Lock | None:
    """SQLite has one writer at a time: queue this process's writers here rather than in
    SQLite's busy handler, which sleeps and retries. Other processes still queue there."""
    if engine.dialect.name != "sqlite":
        return None
    lock = _writer_locks.get(engine)
    if lock is None:
        lock = _writer_locks[engine] = asyncio.Lock()
    return lock


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Yields a connection inside a write transaction that commits on success."""
    lock = _writer_lock(engine)
    if lock is None:
        async with engine.begin() as connection:
            yield connection
        return
    async with lock, engine.begin() as connection:
        yield connection


@asynccontextmanager
async def read_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Yields a connection inside a transaction that takes no write lock on SQLite."""
    async with engine.connect() as connection:
        connection = await connection.execution_options(**{_READ_ONLY: True})
        async with connection.begin():
            yield connection
