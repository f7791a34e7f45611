"""The metrics gauges' reads: the reader plus three counts, each served by a partial index."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.outbox import OutboxKind
from bot.ports.gauges import LeaseCounts, OutboxBacklog
from store.database import read_transaction
from store.reader import SqlReader
from store.schema import LEASED_SQL, OPEN_OUTBOX_SQL, outbox, tasks, workers

#: The open outbox rows by kind, with the oldest's time. The open rows' predicate is spelled as
#: the partial index's, so SQLite's planner uses it.
BACKLOG = (
    select(outbox.c.kind, func.count(), func.min(outbox.c.created_at))
    .where(text(OPEN_OUTBOX_SQL))
    .group_by(outbox.c.kind)
)
#: Leased tasks, and those of them awaiting input (``count`` of a column skips its NULLs).
LEASES = (
    select(func.count(), func.count(tasks.c.awaiting_input_since))
    .select_from(tasks)
    .where(text(LEASED_SQL))
)


class SqlGaugeReader(SqlReader):
    """Implements ``bot.ports.gauges.GaugeReader`` over one open connection."""

    async def list_outbox_backlog(self) -> list[OutboxBacklog]:
        return [
            OutboxBacklog(OutboxKind(kind), int(count), oldest)
            for kind, count, oldest in await self._db.execute(BACKLOG)
        ]

    async def count_leases(self) -> LeaseCounts:
        leased, awaiting = (await self._db.execute(LEASES)).one()
        return LeaseCounts(int(leased), int(awaiting))

    async def count_live_workers(self, cutoff: datetime) -> int:
        query = select(func.count()).where(workers.c.heartbeat_at >= cutoff)
        return int((await self._db.execute(query.select_from(workers))).scalar_one())


class SqlGauges:
    """Implements ``bot.ports.gauges.GaugeStore`` on an engine it does not own."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SqlGaugeReader]:
        async with read_transaction(self.engine) as connection:
            yield SqlGaugeReader(connection)
