"""What the shared database says about the service right now: the gauges a scrape reports.

Read at scrape time, in one transaction, so every replica reports the same backlog, leases and
workers. Stale leases are judged as the reconcile judges them: by each channel's own TTL, with
the SQL twin of ``bot.task.is_stale``.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from bot.clock import Clock
from bot.outbox import OutboxKind, OutboxState
from bot.policy import load_policy_book
from bot.ports.gauges import GaugeReader, GaugeStore
from bot.task import LeasePolicy


class LeaseState(StrEnum):
    """Where a lease stands; every leased task is in exactly one."""

    #: Progress within its channel's TTL (or none recorded yet): the agent is working.
    LIVE = "live"
    #: No progress for longer than its channel's TTL: the next reconcile re-dispatches or
    #: blocks it.
    STALE = "stale"
    #: Paused while the agent waits for a person's answer; never stale.
    AWAITING_INPUT = "awaiting_input"


@dataclass(frozen=True)
class ServiceGauges:
    """One scrape's reading of the database."""

    #: Outbox rows still to be sent, by kind (every kind, zero when none wait).
    outbox_pending: dict[OutboxKind, int]
    #: Seconds since the oldest of them was written, by kind (zero when none wait).
    outbox_oldest_age_s: dict[OutboxKind, float]
    #: Outbox rows refused for good, waiting for an admin.
    outbox_dead: int
    leases: dict[LeaseState, int]
    #: Workers whose heartbeat is within the worker timeout.
    workers_alive: int


class GaugeQueries:
    """Reads the gauges with the injected clock."""

    def __init__(
        self, store: GaugeStore, clock: Clock, policy: LeasePolicy, worker_timeout: timedelta
    ) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._worker_timeout = worker_timeout

    async def read_gauges(self) -> ServiceGauges:
        """The backlog, dead rows, leases by state and live workers, as of now."""
        now = self._clock()
        async with self._store.read() as reader:
            pending, oldest = await _backlog(reader, now)
            dead = (await reader.count_outbox())[OutboxState.DEAD]
            leases = await self._leases(reader, now)
            workers = await reader.count_live_workers(now - self._worker_timeout)
        return ServiceGauges(pending, oldest, dead, leases, workers)

    async def _leases(self, reader: GaugeReader, now: datetime) -> dict[LeaseState, int]:
        book = await load_policy_book(reader, self._policy)
        counts = await reader.count_leases()
        stale = await reader.count_stale_tasks(*book.stale_cutoffs(now))
        return {
            LeaseState.LIVE: counts.leased - counts.awaiting_input - stale,
            LeaseState.STALE: stale,
            LeaseState.AWAITING_INPUT: counts.awaiting_input,
        }


async def _backlog(
    reader: GaugeReader, now: datetime
) -> tuple[dict[OutboxKind, int], dict[OutboxKind, float]]:
    pending = dict.fromkeys(OutboxKind, 0)
    oldest = dict.fromkeys(OutboxKind, 0.0)
    for backlog in await reader.list_outbox_backlog():
        pending[backlog.kind] = backlog.count
        oldest[backlog.kind] = max(0.0, (now - backlog.oldest_at).total_seconds())
    return pending, oldest
