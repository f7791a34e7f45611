"""Engines and transactions: SQLite (WAL, BEGIN IMMEDIATE) or PostgreSQL (asyncpg)."""

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SqlAlchemyTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.errors import ConfigurationError

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
        return url.set(drivername="sqlite+aiosqlite")
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
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **options
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(url, pool_pre_ping=True, **options)


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Turns on WAL, the busy timeout and foreign keys, and makes writers begin IMMEDIATE.

    pysqlite's own transaction handling is switched off so that SQLAlchemy's ``begin`` hook
    decides how each transaction starts: a deferred BEGIN lets two writers both read and then
    fail to upgrade their lock ("database is locked") no matter the busy timeout.
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
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


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
