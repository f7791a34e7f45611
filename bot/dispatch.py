"""The outbox dispatcher: claims rows, paces them per channel, delivers, settles or retries.

Platform-neutral: a Deliverer performs one row and raises DeliveryFailed to say how to retry.
Rows are claimed head-of-thread only, so a thread's side effects land in the order written.
"""

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import structlog

from bot.clock import Clock
from bot.outbox import OutboxKind, OutboxRow
from bot.ports import OutboxQueue
from bot.signal import work_loop
from bot.task import TaskRef

logger = structlog.get_logger(__name__)

#: Kinds that post a new message, and so count against a channel's posting rate.
POSTING_KINDS = frozenset({OutboxKind.CARD_POST, OutboxKind.DIRECTIVE, OutboxKind.ESCALATION})


@dataclass(frozen=True)
class Delivered:
    """Where a row landed: the platform's message id, and whether an earlier post was found."""

    ts: str
    recovered: bool = False


class DeliveryFailed(Exception):
    """A delivery that did not happen (or may have): how long to wait, and whether it is unsure."""

    def __init__(self, reason: str, retry_after: float | None = None, uncertain: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.uncertain = uncertain


class Deliverer(Protocol):
    async def deliver(self, row: OutboxRow) -> Delivered: ...


@dataclass(frozen=True)
class DispatchSettings:
    """Pacing and retry knobs; seconds throughout."""

    batch_size: int = 20
    claim_ttl: float = 60.0
    channel_interval: float = 1.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    idle_poll: float = 1.0


class OutboxDispatcher:
    """Delivers the outbox until stopped; ``wake()`` after a commit makes it look at once."""

    def __init__(
        self,
        queue: OutboxQueue,
        deliverer: Deliverer,
        clock: Clock,
        worker: str,
        settings: DispatchSettings | None = None,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._deliverer = deliverer
        self._clock = clock
        self._worker = worker
        self._settings = settings or DispatchSettings()
        self._rand = rand
        self._sleep = sleep
        self._monotonic = monotonic
        self._next_post: dict[str, float] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Delivers rows as they come, until cancelled."""
        await work_loop(
            self.run_once, self._wake, self._settings.idle_poll, "outbox.dispatch_failed"
        )

    async def run_once(self) -> int:
        """Claims one batch and delivers it, channels in parallel; returns rows attempted."""
        now = self._clock()
        claim_until = now + timedelta(seconds=self._settings.claim_ttl)
        rows = await self._queue.claim_outbox(
            self._worker, now, claim_until, self._settings.batch_size
        )
        by_channel: dict[str, list[OutboxRow]] = {}
        for row in rows:
            by_channel.setdefault(TaskRef.parse(row.payload["ref"]).channel_id, []).append(row)
        await asyncio.gather(*(self._deliver_channel(c, rs) for c, rs in by_channel.items()))
        return len(rows)

    async def drain(self, max_rounds: int = 1000) -> None:
        """Delivers until nothing is due (for tests and the CLI); bounded by ``max_rounds``."""
        for _ in range(max_rounds):
            if await self.run_once() == 0:
                return

    async def _deliver_channel(self, channel: str, rows: list[OutboxRow]) -> None:
        for row in rows:
            if row.kind in POSTING_KINDS:
                await self._pace(channel)
            await self._deliver(row)

    async def _pace(self, channel: str) -> None:
        """Keeps posts in one channel about ``channel_interval`` apart, as Slack asks."""
        now = self._monotonic()
        wait = self._next_post.get(channel, now) - now
        if wait > 0:
            await self._sleep(wait)
        self._next_post[channel] = (
            max(now, self._next_post.get(channel, now)) + self._settings.channel_interval
        )

    async def _deliver(self, row: OutboxRow) -> None:
        log = logger.bind(outbox_id=row.id, kind=row.kind.value, ref=row.payload.get("ref"))
        try:
            delivered = await self._deliverer.deliver(row)
        except DeliveryFailed as failure:
            await self._retry(row, failure, log)
            return
        except Exception as exc:
            log.exception("outbox.delivery_error")
            await self._retry(row, DeliveryFailed(type(exc).__name__, uncertain=True), log)
            return
        card = (row.task_id, delivered.ts) if row.kind == OutboxKind.CARD_POST else None
        result: dict[str, object] = {"ts": delivered.ts, "recovered": delivered.recovered}
        settled = await self._queue.mark_delivered(
            row.id, self._worker, result, self._clock(), card=card
        )
        log.info(
            "outbox.delivered", ts=delivered.ts, recovered=delivered.recovered, settled=settled
        )

    async def _retry(
        self, row: OutboxRow, failure: DeliveryFailed, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        delay = (
            failure.retry_after if failure.retry_after is not None else self._backoff(row.attempts)
        )
        at = self._clock() + timedelta(seconds=delay)
        await self._queue.release_for_retry(
            row.id, self._worker, at, failure.reason, failure.uncertain
        )
        log.warning(
            "outbox.retry", reason=failure.reason, delay_s=round(delay, 3), attempt=row.attempts
        )

    def _backoff(self, attempts: int) -> float:
        """Exponential back-off with jitter: base * 2^(n-1), capped, times 0.5 to 1.5."""
        raw = self._settings.backoff_base * float(2 ** max(0, attempts - 1))
        return min(self._settings.backoff_cap, raw) * (0.5 + self._rand())
