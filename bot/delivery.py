"""Outbox delivery: claims rows, paces them per channel, delivers, settles, retries or parks.

Platform-neutral: a Deliverer performs one row and raises DeliveryFailed to say whether and how
to retry. Rows are claimed head-of-thread only, so a thread's side effects land in the order
written; a row the platform refuses for good is parked as dead, and the rest of its thread goes
on without it.
"""

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Protocol

import structlog

from bot.clock import Clock
from bot.outbox import OutboxKind, OutboxRow
from bot.ports import OutboxQueue
from bot.signal import work_loop
from bot.task import Actor, EventKind, NewEvent, TaskRef

logger = structlog.get_logger(__name__)

#: Kinds that post a new message, and so count against a channel's posting rate.
POSTING_KINDS = frozenset({OutboxKind.CARD_POST, OutboxKind.DIRECTIVE, OutboxKind.ESCALATION})
#: Who parks a row as dead, in its task's history.
OUTBOX_ACTOR = Actor.system("outbox")

Log = structlog.typing.FilteringBoundLogger


@dataclass(frozen=True)
class Delivered:
    """Where a row landed: the platform's message id, and whether an earlier post was found."""

    ts: str
    recovered: bool = False
    #: Nothing needed doing (a card update for a card that was never posted).
    skipped: bool = False


class Retry(StrEnum):
    """Whether a failed row is worth another attempt, and what kind."""

    #: Later, after Retry-After or a back-off: a rate limit, server trouble, a lost answer.
    LATER = "later"
    #: At once, with a shortened text: the message was too long. A second refusal is final.
    SHORTENED = "shortened"
    #: Never: the platform refuses this row for good (archived channel, invalid blocks ...).
    NEVER = "never"


class DeliveryFailed(Exception):
    """A delivery that did not happen (or may have): whether and when to retry, and whether it
    is unsure."""

    def __init__(
        self,
        reason: str,
        retry_after: float | None = None,
        uncertain: bool = False,
        retry: Retry = Retry.LATER,
    ):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.uncertain = uncertain
        self.retry = retry


class Deliverer(Protocol):
    async def deliver(self, row: OutboxRow) -> Delivered: ...


@dataclass(frozen=True)
class DeliverySettings:
    """Pacing and retry knobs; seconds throughout."""

    batch_size: int = 20
    claim_ttl: float = 60.0
    channel_interval: float = 1.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    idle_poll: float = 1.0
    #: Attempts that failed with an unexpected error (a bug, not the platform's answer) before
    #: the row is parked as dead rather than holding up its thread for ever.
    max_unexplained_attempts: int = 10


class OutboxDelivery:
    """Delivers the outbox until stopped; ``wake()`` after a commit makes it look at once.

    Each channel's rows are delivered in order by that channel's own task, so one channel's
    pacing (about a second between posts) or a slow call never holds up the other channels:
    the loop hands claimed rows to the channel tasks and claims again without waiting for them.
    Rows stay claimed while queued (their claim outlasts any channel's queue), and a task's next
    row becomes claimable only once the previous one is delivered, so order per thread holds.
    """

    def __init__(
        self,
        queue: OutboxQueue,
        deliverer: Deliverer,
        clock: Clock,
        worker: str,
        settings: DeliverySettings | None = None,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._deliverer = deliverer
        self._clock = clock
        self._worker = worker
        self._settings = settings or DeliverySettings()
        self._rand = rand
        self._sleep = sleep
        self._monotonic = monotonic
        self._next_post: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._queued: dict[str, deque[OutboxRow]] = {}
        self._channels: dict[str, asyncio.Task[None]] = {}
        #: Rows claimed and not yet done with, queued or being delivered.
        self._holding = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Delivers rows as they come, until cancelled."""
        try:
            await work_loop(
                self._claim, self._wake, self._settings.idle_poll, "outbox.claim_failed"
            )
        finally:
            for task in self._channels.values():
                task.cancel()
            await self._settle()

    async def run_once(self) -> int:
        """Claims one batch and waits until it is delivered; returns rows attempted."""
        claimed = await self._claim()
        await self._settle()
        return claimed

    async def _settle(self) -> None:
        """Waits until every channel task has ended (including any started meanwhile)."""
        while self._channels:
            await asyncio.gather(*self._channels.values(), return_exceptions=True)
            for channel, task in list(self._channels.items()):
                if task.done():  # also one cancelled before it ever ran
                    self._channels.pop(channel, None)
                    self._holding -= len(self._queued.pop(channel, ()))

    async def drain(self, max_rounds: int = 1000) -> None:
        """Delivers until nothing is due (for tests and the CLI); bounded by ``max_rounds``."""
        for _ in range(max_rounds):
            if await self.run_once() == 0:
                return

    async def _claim(self) -> int:
        """Claims due rows and hands each to its channel's task; does not wait for delivery.

        At most ``batch_size`` rows wait in the channel tasks at once, so a claimed row is
        delivered (at worst after ``batch_size`` paced posts) well before its claim expires.
        """
        room = self._settings.batch_size - self._holding
        if room <= 0:
            return 0
        now = self._clock()
        claim_until = now + timedelta(seconds=self._settings.claim_ttl)
        rows = await self._queue.claim_outbox(self._worker, now, claim_until, room)
        self._holding += len(rows)
        for row in rows:
            channel = TaskRef.parse(row.payload["ref"]).channel_id
            self._queued.setdefault(channel, deque()).append(row)
            if channel not in self._channels:
                task = asyncio.create_task(self._deliver_channel(channel), name=f"outbox:{channel}")
                self._channels[channel] = task
        return len(rows)

    async def _deliver_channel(self, channel: str) -> None:
        """Delivers the channel's queued rows in order, then ends (a new claim starts it again)."""
        queue = self._queued[channel]
        try:
            while queue:
                row = queue.popleft()
                try:
                    if row.kind in POSTING_KINDS:
                        await self._pace(channel)
                    await self._deliver(row)
                except Exception:
                    # Recording the result failed: the row is claimed until its claim expires,
                    # then claimed again as uncertain, and looked up before any re-post.
                    logger.exception("outbox.record_failed", outbox_id=row.id)
                finally:
                    self._holding -= 1
                self.wake()  # the task's next row may be claimable now
        finally:
            self._holding -= len(queue)  # left undelivered by a cancellation
            self._queued.pop(channel, None)
            self._channels.pop(channel, None)

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
            await self._settle_failure(row, failure, log)
            return
        except Exception as exc:
            log.exception("outbox.delivery_error")
            await self._unexplained(row, exc, log)
            return
        card = (row.task_id, delivered.ts) if row.kind == OutboxKind.CARD_POST else None
        result: dict[str, object] = {"ts": delivered.ts, "recovered": delivered.recovered}
        settled = await self._queue.mark_delivered(
            row.id, self._worker, result, self._clock(), card=card
        )
        log.info(
            "outbox.delivered", ts=delivered.ts, recovered=delivered.recovered, settled=settled
        )

    async def _unexplained(self, row: OutboxRow, error: Exception, log: Log) -> None:
        """An unexpected error is a bug, not weather: retried (as possibly half done) a few
        times, then parked, so it stops holding up its thread."""
        failure = DeliveryFailed(f"error: {type(error).__name__}", uncertain=True)
        if row.attempts >= self._settings.max_unexplained_attempts:
            await self._park(row, failure, log)
        else:
            await self._retry(row, failure, log)

    async def _settle_failure(self, row: OutboxRow, failure: DeliveryFailed, log: Log) -> None:
        """Retries later, retries at once shortened (the first time a row is too long), or
        parks the row as dead."""
        if failure.retry == Retry.LATER:
            await self._retry(row, failure, log)
        elif failure.retry == Retry.SHORTENED and not row.shortened:
            await self._retry(row, failure, log, delay=0.0, shortened=True)
        else:
            await self._park(row, failure, log)

    async def _retry(
        self,
        row: OutboxRow,
        failure: DeliveryFailed,
        log: Log,
        delay: float | None = None,
        shortened: bool = False,
    ) -> None:
        if delay is None:
            delay = failure.retry_after
        if delay is None:
            delay = self._backoff(row.attempts)
        at = self._clock() + timedelta(seconds=delay)
        await self._queue.release_for_retry(
            row.id, self._worker, at, failure.reason, failure.uncertain, shortened
        )
        log.warning(
            "outbox.retry",
            reason=failure.reason,
            delay_s=round(delay, 3),
            attempt=row.attempts,
            shortened=shortened or row.shortened,
        )

    async def _park(self, row: OutboxRow, failure: DeliveryFailed, log: Log) -> None:
        """Parks ``row`` as dead with the platform's error, recorded in its task's history."""
        data = {"outbox_id": row.id, "kind": row.kind.value, "error": failure.reason[:200]}
        event = NewEvent(row.task_id, EventKind.OUTBOX_DEAD, OUTBOX_ACTOR, self._clock(), data)
        if await self._queue.mark_dead(row.id, self._worker, failure.reason, event):
            log.error("outbox.dead", reason=failure.reason, attempt=row.attempts)
        else:
            log.warning("outbox.claim_lost", reason=failure.reason)

    def _backoff(self, attempts: int) -> float:
        """Exponential back-off with jitter: base * 2^(n-1), capped, times 0.5 to 1.5."""
        raw = self._settings.backoff_base * float(2 ** max(0, attempts - 1))
        return min(self._settings.backoff_cap, raw) * (0.5 + self._rand())
