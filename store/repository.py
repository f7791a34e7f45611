"""The SQL store: opens units of work and outbox transactions on one engine."""

from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.budget import Rate
from bot.outbox import OutboxRow
from bot.ports.outbox import Recorded
from bot.session import SessionStatus
from bot.signal import Queued
from bot.task import NewEvent
from store import inbound, notify, outbox, outbox_claims
from store.budgets import take_token
from store.database import read_transaction, write_transaction
from store.reader import SqlReader
from store.unit import SqlUnit


class SqlStore:
    """Implements ``bot.ports.Store`` and ``bot.ports.outbox.OutboxQueue``. It does not own the
    engine."""

    def __init__(self, engine: AsyncEngine, sender: str = "") -> None:
        self.engine = engine
        #: This process, as other processes hear of its commits (``store.notify``).
        self.sender = sender

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlUnit]:
        """A unit of work; if it queued work, other processes are told when it commits."""
        async with write_transaction(self.engine) as connection:
            unit = SqlUnit(connection)
            yield unit
            await notify.send(connection, self.sender, unit.queued)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SqlReader]:
        async with read_transaction(self.engine) as connection:
            yield SqlReader(connection)

    async def ping(self) -> None:
        """Raises unless the database answers a trivial query."""
        async with read_transaction(self.engine) as connection:
            await connection.execute(text("SELECT 1"))

    async def claim_outbox(
        self,
        worker: str,
        now: datetime,
        limit: int,
        per_lane: int | None = None,
        held: Mapping[tuple[str, bool], int] | None = None,
    ) -> list[OutboxRow]:
        async with write_transaction(self.engine) as connection:
            return await outbox_claims.claim_outbox(connection, worker, now, limit, per_lane, held)

    async def release_claims(self, worker: str, uncertain_ids: Collection[int]) -> int:
        """Hands back what ``worker`` holds (a clean stop); other processes are told."""
        async with write_transaction(self.engine) as connection:
            released = await outbox.release_claims(connection, worker, uncertain_ids)
            if released:
                await notify.send(connection, self.sender, {Queued.OUTBOX})
            return released

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
            if settled is not None and card is not None:
                await SqlUnit(connection).record_card(*card)
            return settled is not None

    async def mark_delivered_and_claim_next(
        self,
        row_id: int,
        worker: str,
        result: dict[str, object],
        at: datetime,
        card: tuple[int, str] | None,
        per_lane: int,
        held: Mapping[tuple[str, bool], int],
        session: tuple[int, SessionStatus] | None = None,
    ) -> Recorded:
        """Settles a delivered row and, in the same transaction, claims its thread's next row."""
        async with write_transaction(self.engine) as connection:
            task_id = await outbox.mark_delivered(connection, row_id, worker, result, at)
            if task_id is None:
                return Recorded(settled=False)
            if card is not None:
                await SqlUnit(connection).record_card(*card)
            if session is not None:
                await SqlUnit(connection).record_session(*session, at)
            following = await outbox_claims.claim_next(
                connection, worker, task_id, row_id, at, per_lane, held
            )
            return Recorded(settled=True, next_row=following)

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

    async def take_token(self, name: str, rate: Rate, now: datetime) -> float | None:
        """Takes one token from the rate budget ``name`` (``bot.budget.RateBudgets``), shared
        by every process on this database."""
        async with write_transaction(self.engine) as connection:
            return await take_token(connection, name, rate, now)

    async def list_outbox(self, task_id: int | None = None) -> list[OutboxRow]:
        async with read_transaction(self.engine) as connection:
            return await outbox.list_outbox(connection, task_id)
