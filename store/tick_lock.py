"""The reconcile's lock across replicas: a PostgreSQL advisory lock, held for one tick."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = structlog.get_logger(__name__)

#: The reconcile's advisory lock key: the bytes of "tw:recon" as one bigint. Advisory locks are
#: per database, so deployments on separate databases of one server never contend.
RECONCILE_LOCK_KEY = int.from_bytes(b"tw:recon", "big")


class AdvisoryLock:
    """Implements ``bot.ports.tick_lock.TickLock`` with ``pg_try_advisory_lock`` on a connection
    of the engine's checked out for the tick.

    The lock is the session's, so it would outlive the tick on a pooled connection: it is
    released with ``pg_advisory_unlock`` when the tick ends, and a connection whose unlock
    failed is invalidated rather than pooled (closing it makes the server drop the lock).
    """

    def __init__(self, engine: AsyncEngine, key: int = RECONCILE_LOCK_KEY) -> None:
        self._engine = engine
        self._key = key

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[bool]:
        async with self._engine.connect() as connection:
            held = bool(await connection.scalar(select(func.pg_try_advisory_lock(self._key))))
            await connection.commit()
            try:
                yield held
            finally:
                if held:
                    await self._release(connection)

    async def _release(self, connection: AsyncConnection) -> None:
        try:
            await connection.scalar(select(func.pg_advisory_unlock(self._key)))
            await connection.commit()
        except (DBAPIError, OSError) as exc:
            # The connection broke: the server drops a session's locks with it.
            logger.warning("reconcile_lock.release_failed", error=type(exc).__name__)
            await connection.invalidate()
        except BaseException:
            await connection.invalidate()  # cancelled mid-unlock: never pool a held lock
            raise


def reconcile_lock(engine: AsyncEngine) -> AdvisoryLock | None:
    """The reconcile's lock on PostgreSQL; None elsewhere (SQLite: one host, always held)."""
    return AdvisoryLock(engine) if engine.dialect.name == "postgresql" else None
