"""Scratch databases for the benchmark: a file for SQLite, a throwaway database on PostgreSQL.

Each one is migrated with ``store.migrate.upgrade``, the only source of the schema, and its
engine comes from ``store.database.create_engine``, so the tick runs on the settings the
service uses (WAL and BEGIN IMMEDIATE on SQLite, asyncpg on PostgreSQL).
"""

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from store.database import create_engine
from store.migrate import upgrade

BACKENDS = ("sqlite", "postgres")
SCRATCH_PREFIX = "threadwork_bench_"


@dataclass(frozen=True)
class Backend:
    """Where scratch databases go: ``workdir`` for SQLite files, ``pg_url``'s server otherwise."""

    name: str
    workdir: Path
    pg_url: str
    keep: bool = False

    @asynccontextmanager
    async def scratch(self, label: str) -> AsyncIterator[AsyncEngine]:
        """Yields an engine on a new, migrated database; drops it afterwards unless ``keep``."""
        url = await self._create(f"{SCRATCH_PREFIX}{label}")
        engine = create_engine(url)
        try:
            await upgrade(engine)
            yield engine
        finally:
            await engine.dispose()
            if not self.keep:
                await self._drop(f"{SCRATCH_PREFIX}{label}")

    async def _create(self, name: str) -> str:
        if self.name == "sqlite":
            _remove_sqlite_files(self._sqlite_path(name))
            return f"sqlite:///{self._sqlite_path(name)}"
        await self._admin(f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
        return make_url(self.pg_url).set(database=name).render_as_string(hide_password=False)

    async def _drop(self, name: str) -> None:
        if self.name == "sqlite":
            _remove_sqlite_files(self._sqlite_path(name))
            return
        await self._admin(f'DROP DATABASE IF EXISTS "{name}"')

    def _sqlite_path(self, name: str) -> Path:
        return self.workdir / f"{name}.db"

    async def _admin(self, *statements: str) -> str:
        """Runs ``statements`` outside a transaction on ``pg_url``; returns the last scalar."""
        engine = create_engine(self.pg_url)
        try:
            async with engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                for statement in statements:
                    result = await autocommit.execute(text(statement))
                return str(result.scalar()) if result.returns_rows else ""
        finally:
            await engine.dispose()

    async def version(self) -> str:
        """The database engine's version, for the record."""
        if self.name == "sqlite":
            return sqlite3.sqlite_version
        return await self._admin("SHOW server_version")


def _remove_sqlite_files(path: Path) -> None:
    """Deletes a SQLite database with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


async def analyze(engine: AsyncEngine) -> None:
    """Gathers planner statistics after loading, then settles the database."""
    if engine.dialect.name == "sqlite":
        async with engine.begin() as connection:
            await connection.execute(text("ANALYZE"))
    await settle(engine)


async def settle(engine: AsyncEngine) -> None:
    """Leaves the database as it would be between ticks, so a tick pays only for itself.

    SQLite: checkpoints the WAL, or the tick's first commit would copy back the pages that
    arming the stale set just wrote. PostgreSQL: VACUUM ANALYZE, as autovacuum would have
    done, so dead index entries from the previous run are not scanned and autovacuum has
    nothing to start mid-tick.
    """
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            driver: Any = (await connection.get_raw_connection()).driver_connection
            async with driver.execute("PRAGMA wal_checkpoint(TRUNCATE)"):
                return
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE tasks, task_events, outbox"))
