"""What the metrics gauges read about the shared database, in one read transaction."""

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from bot.outbox import OutboxKind
from bot.ports.outbox import OutboxReads
from bot.ports.tasks import PolicyReads, TaskReads


@dataclass(frozen=True)
class OutboxBacklog:
    """The outbox rows of one kind still to be sent (pending or in flight)."""

    kind: OutboxKind
    count: int
    #: When the oldest of them was written.
    oldest_at: datetime


@dataclass(frozen=True)
class LeaseCounts:
    """Leased tasks: claimed, in a status the reconcile watches."""

    leased: int
    #: Of those, the ones paused while their agent waits for a person's answer.
    awaiting_input: int


class GaugeReads(Protocol):
    """What the metrics gauges read about the shared database: counts over partial indexes,
    so a scrape costs what the backlog and the leases hold, not the size of the tables."""

    async def list_outbox_backlog(self) -> list[OutboxBacklog]:
        """The open outbox rows by kind; kinds with none are left out."""
        ...

    async def count_leases(self) -> LeaseCounts: ...

    async def count_live_workers(self, cutoff: datetime) -> int:
        """Workers whose heartbeat is at or after ``cutoff``."""
        ...


class GaugeReader(GaugeReads, TaskReads, PolicyReads, OutboxReads, Protocol):
    """A scrape's reads, served by one transaction."""


class GaugeStore(Protocol):
    """Opens the read transaction a scrape's gauges are read in."""

    def read(self) -> AbstractAsyncContextManager[GaugeReader]: ...
