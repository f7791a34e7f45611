"""Workers: registration, heartbeats, and taking over what a dead worker held.

A claim (an outbox row in flight, a held agent wake-up) is valid while its holder's heartbeat is
fresh. The takeover reopens every claim whose holder is not a live worker, whether it died or
was never registered (a process from before workers existed), and forgets dead workers.
"""

from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.claims import Released
from bot.outbox import OutboxState
from bot.signal import Queued
from store.dialect import dialect_insert
from store.schema import HELD_WAKEUP_SQL, OPEN_OUTBOX_SQL, agent_wakeups, outbox, workers

_IN_FLIGHT = OutboxState.IN_FLIGHT.value


def _alive(cutoff: datetime) -> ColumnElement[bool]:
    return workers.c.heartbeat_at >= cutoff


class WorkerWrites:
    """Workers' rows and the claims they hold; mixed into the unit of work."""

    _db: AsyncConnection
    queued: set[Queued]

    async def register_worker(self, worker: str, now: datetime) -> None:
        """Registers (or re-registers) ``worker`` as alive at ``now``."""
        query = (
            dialect_insert(self._db, workers)
            .values(id=worker, started_at=now, heartbeat_at=now)
            .on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": now})
        )
        await self._db.execute(query)

    async def heartbeat_worker(self, worker: str, now: datetime) -> bool:
        """Says ``worker`` is alive; False when its row is gone (it was presumed dead)."""
        query = update(workers).where(workers.c.id == worker).values(heartbeat_at=now)
        return (await self._db.execute(query)).rowcount == 1

    async def release_worker(self, worker: str) -> Released:
        """Hands back everything ``worker`` holds and forgets it (a clean shutdown): its
        wake-ups are claimable again, and its rows still in flight are pending again as
        uncertain (their call may have been under way)."""
        released = await self._reopen(
            outbox.c.claimed_by == worker, agent_wakeups.c.claimed_by == worker
        )
        await self._db.execute(delete(workers).where(workers.c.id == worker))
        return released

    async def take_over_dead_workers(self, cutoff: datetime, me: str) -> tuple[list[str], Released]:
        """Forgets the workers whose heartbeat is older than ``cutoff`` and reopens every claim
        not held by a live worker; returns the dead workers' names and what was reopened.
        ``me``, the worker taking over, is alive by definition."""
        dead_query = select(workers.c.id).where(~_alive(cutoff), workers.c.id != me)
        dead = sorted(str(name) for name in (await self._db.execute(dead_query)).scalars())
        if dead:
            await self._db.execute(delete(workers).where(workers.c.id.in_(dead)))
        live = select(workers.c.id).where(_alive(cutoff) | (workers.c.id == me))
        released = await self._reopen(
            outbox.c.claimed_by.not_in(live), agent_wakeups.c.claimed_by.not_in(live)
        )
        return dead, released

    async def oldest_heartbeat(self, me: str) -> datetime | None:
        """The oldest heartbeat of the other workers: the first that may lapse."""
        query = select(func.min(workers.c.heartbeat_at)).where(workers.c.id != me)
        oldest: datetime | None = (await self._db.execute(query)).scalar_one_or_none()
        return oldest

    async def _reopen(
        self, outbox_held: ColumnElement[bool], wakeup_held: ColumnElement[bool]
    ) -> Released:
        # The partial indexes' own predicates, spelled as they are, so SQLite uses them: the
        # outbox keeps every delivered row, and only the open ones may be scanned here.
        in_flight = text(OPEN_OUTBOX_SQL) & (outbox.c.state == _IN_FLIGHT)
        rows = update(outbox).where(in_flight, outbox_held)
        rows = rows.values(
            state=OutboxState.PENDING.value,
            claimed_by=None,
            claim_expires_at=None,
            uncertain=true(),
        )
        reopened_rows = int((await self._db.execute(rows)).rowcount)
        wakeups = update(agent_wakeups).where(text(HELD_WAKEUP_SQL), wakeup_held)
        wakeups = wakeups.values(claimed_by=None, claim_expires_at=None)
        reopened_wakeups = int((await self._db.execute(wakeups)).rowcount)
        if reopened_rows:
            self.queued.add(Queued.OUTBOX)
        if reopened_wakeups:
            self.queued.add(Queued.WAKEUPS)
        return Released(reopened_rows, reopened_wakeups)
