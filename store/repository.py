"""The SQL store: opens units of work and outbox transactions on one engine."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.outbox import OutboxRow
from bot.task import NewEvent
from store import inbound, outbox
from store.database import read_transaction, write_transaction
from store.reader import SqlReader
from store.unit import SqlUnit


class SqlStore:
    """Implements ``bot.ports.Store`` and ``bot.ports.OutboxQueue``. It does not own the engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlUnit]:
        async with write_transaction(self.engine) as connection:
            yield SqlUnit(connection)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SqlReader]:
        async with read_transaction(self.engine) as connection:
            yield SqlReader(connection)

    async def ping(self) -> None:
        """Raises unless the database answers a trivial query."""
        async with read_transaction(self.engine) as connection:
            await connection.execute(text("SELECT 1"))

    async def claim_outbox(
        self, worker: str, now: datetime, claim_until: datetime, limit: int
    ) -> list[OutboxRow]:
        async with write_transaction(self.engine) as connection:
            return await outbox.claim_outbox(connection, worker, now, claim_until, limit)

    async def mark_delivered(
        self,
        row_id: int,
        worker: str,
        result: dict[str, object],
        at: datetime,
        card: tuple[int, str] | None = None,
    ) -> bool:
        """Settles a delivered row; ``card`` (task id, ts) also records where a card landed."""
        async with write_transaction(self.engine) as connection:
            settled = await outbox.mark_delivered(connection, row_id, worker, result, at)
            if settled and card is not None:
                await SqlUnit(connection).record_card(*card)
            return settled

    async def release_for_retry(
        self,
        row_id: int,
        worker: str,
        available_at: datetime,
        error: str,
        uncertain: bool = False,
        shortened: bool = False,
    ) -> bool:
        async with write_transaction(self.engine) as connection:
            return await outbox.release_for_retry(
                connection, row_id, worker, available_at, error, uncertain, shortened
            )

    async def mark_dead(self, row_id: int, worker: str, error: str, event: NewEvent) -> bool:
        """Parks a row the platform refused for good, with the event that says so."""
        async with write_transaction(self.engine) as connection:
            parked = await outbox.mark_dead(connection, row_id, worker, error)
            if parked:
                await SqlUnit(connection).append_events([event])
            return parked

    async def remember_inbound_event(self, event_id: str, at: datetime) -> bool:
        async with write_transaction(self.engine) as connection:
            return await inbound.remember(connection, event_id, at)

    async def forget_inbound_event(self, event_id: str) -> None:
        async with write_transaction(self.engine) as connection:
            await inbound.forget(connection, event_id)

    async def prune_inbound_event_ids(self, before: datetime) -> int:
        async with write_transaction(self.engine) as connection:
            return await inbound.prune(connection, before)

    async def list_outbox(self, task_id: int | None = None) -> list[OutboxRow]:
        async with read_transaction(self.engine) as connection:
            return await outbox.list_outbox(connection, task_id)
