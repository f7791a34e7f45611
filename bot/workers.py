"""Workers: each process says it is alive, and takes over what dead ones held.

Every ``serve`` process is a worker. It registers at start, heartbeats every few seconds, and
deregisters at a clean shutdown, handing back its claims at once. A claim (an outbox row in
flight, an agent wake-up held for a run) is valid while its holder is alive; when a worker's
heartbeat is older than the worker timeout, the next live worker's beat takes its claims over:
outbox rows go back to pending as uncertain (looked up before any re-post), wake-ups become
claimable, so another runner resumes the run.

Claims stay owner-scoped: a worker that comes back after being presumed dead finds its row gone,
cannot settle what it lost, and is told (``when_lost``) so it drops the work it still had.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog

from bot.claims import Released
from bot.clock import Clock
from bot.delivery import Delivered, Deliverer
from bot.outbox import OutboxRow
from bot.outbox_retries import DeliveryFailed
from bot.ports import Store
from bot.signal import Notify, ignore

logger = structlog.get_logger(__name__)

#: Beats per worker timeout: a worker misses several beats before it is presumed dead.
BEATS_PER_TIMEOUT = 5
#: How long after another worker's heartbeat lapses the takeover looks (clock granularity).
LAPSE_MARGIN_S = 0.05


class Liveness:
    """This process's registration in the ``workers`` table, its heartbeat and the takeover."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        worker: str,
        timeout: timedelta,
        notify: Notify = ignore,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._clock = clock
        self.worker = worker
        self._timeout = timeout
        self._notify = notify
        self._lost: list[Callable[[], Awaitable[None]]] = []
        self._monotonic = monotonic
        self._beat_at: float | None = None
        self._loop: asyncio.Task[None] | None = None
        #: When the stalest other worker's heartbeat passes the timeout, if it stays silent.
        self._next_lapse: datetime | None = None

    def when_lost(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Calls ``callback`` when this worker finds it was presumed dead (its claims were
        taken over): whatever it still runs or sends must stop."""
        self._lost.append(callback)

    @property
    def interval(self) -> float:
        """Seconds between beats."""
        return self._timeout.total_seconds() / BEATS_PER_TIMEOUT

    def fresh(self) -> bool:
        """Whether this worker's last heartbeat reached the database recently enough that no
        one can have presumed it dead yet (so what it holds is still its own to send)."""
        if self._beat_at is None:
            return False
        margin = self._timeout.total_seconds() - self.interval
        return self._monotonic() - self._beat_at < margin

    async def start(self, beat: bool = True) -> None:
        """Registers this worker, takes over the dead at once, and starts beating (unless
        ``beat`` is false: tests then call :meth:`beat` themselves)."""
        async with self._store.transaction() as unit:
            await unit.register_worker(self.worker, self._clock())
        self._beat_at = self._monotonic()
        await self.take_over()
        if beat:
            self._loop = asyncio.create_task(self._run(), name=f"liveness:{self.worker}")

    async def beat(self) -> None:
        """One heartbeat, then the takeover of dead workers' claims."""
        started = self._monotonic()
        async with self._store.transaction() as unit:
            alive = await unit.heartbeat_worker(self.worker, self._clock())
            if not alive:
                await unit.register_worker(self.worker, self._clock())
        self._beat_at = started
        if not alive:
            logger.error("worker.presumed_dead", worker=self.worker)
            for callback in self._lost:
                await callback()
        await self.take_over()

    async def take_over(self) -> Released:
        """Reopens the claims of workers whose heartbeat is older than the timeout, and notes
        when the next one may lapse (the beat loop wakes then, not a beat later)."""
        now = self._clock()
        async with self._store.transaction() as unit:
            dead, released = await unit.take_over_dead_workers(now - self._timeout, self.worker)
            oldest = await unit.oldest_heartbeat(self.worker)
        self._notify(frozenset(unit.queued))
        self._next_lapse = None if oldest is None else oldest + self._timeout
        if dead or released:
            logger.warning(
                "worker.takeover",
                dead=dead,
                outbox_rows=released.outbox_rows,
                wakeups=released.wakeups,
            )
        return released

    async def stop(self) -> Released:
        """Stops beating, hands back every claim this worker still holds and deregisters."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        async with self._store.transaction() as unit:
            released = await unit.release_worker(self.worker)
        self._notify(frozenset(unit.queued))
        self._beat_at = None
        logger.info(
            "worker.stopped",
            worker=self.worker,
            outbox_rows=released.outbox_rows,
            wakeups=released.wakeups,
        )
        return released

    def next_wait(self) -> float:
        """Seconds until the next beat: the interval, or less when another worker's heartbeat
        lapses sooner, so its claims are taken over the moment it is presumed dead."""
        if self._next_lapse is None:
            return self.interval
        lapse = (self._next_lapse - self._clock()).total_seconds() + LAPSE_MARGIN_S
        return max(LAPSE_MARGIN_S, min(self.interval, lapse))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.next_wait())
            try:
                await self.beat()
            except Exception:
                # The database may be away: the next beat tries again, and until one lands
                # ``fresh()`` turns false, so this worker stops sending what it holds.
                logger.exception("worker.beat_failed", worker=self.worker)


class FencedDeliverer:
    """Delivers a row only while this worker is fresh: once its heartbeat is late enough that
    another worker may have taken its rows over, it sends nothing more (the row is handed back
    for later, or reopened by whoever took over), so a stalled worker never doubles a post."""

    def __init__(self, deliverer: Deliverer, liveness: Liveness) -> None:
        self._deliverer = deliverer
        self._liveness = liveness

    async def deliver(self, row: OutboxRow) -> Delivered:
        if not self._liveness.fresh():
            raise DeliveryFailed("worker_late: this worker's heartbeat is late", retry_after=1.0)
        return await self._deliverer.deliver(row)
