"""What becomes of an outbox row whose delivery failed: retried later (after the platform's
Retry-After, or an exponential back-off with jitter), retried at once shortened, or parked as
dead with the platform's error recorded in its task's history.

A Deliverer says how it failed by raising DeliveryFailed; any other error is a bug, not the
platform's answer, and is retried as possibly half done a few times before the row is parked.
"""

import random
from collections.abc import Callable
from datetime import timedelta
from enum import StrEnum

import structlog

from bot.clock import Clock
from bot.outbox import OutboxRow
from bot.ports.outbox import OutboxQueue
from bot.task import Actor, EventKind, NewEvent

#: Who parks a row as dead, in its task's history.
OUTBOX_ACTOR = Actor.system("outbox")

Log = structlog.typing.FilteringBoundLogger


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
        rate_limited: bool = False,
    ):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.uncertain = uncertain
        self.retry = retry
        #: The platform's rate limit refused the call: the row's whole lane waits
        #: ``retry_after``, not only the row.
        self.rate_limited = rate_limited


class OutboxRetries:
    """Settles the failed rows ``worker`` holds: back to pending for a retry, or dead."""

    def __init__(
        self,
        queue: OutboxQueue,
        clock: Clock,
        worker: str,
        *,
        backoff_base: float,
        backoff_cap: float,
        max_unexplained_attempts: int,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._queue = queue
        self._clock = clock
        self._worker = worker
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_unexplained_attempts = max_unexplained_attempts
        self._rand = rand

    async def settle_failure(self, row: OutboxRow, failure: DeliveryFailed, log: Log) -> None:
        """Retries later, retries at once shortened (the first time a row is too long), or
        parks the row as dead."""
        if failure.retry == Retry.LATER:
            await self._retry(row, failure, log)
        elif failure.retry == Retry.SHORTENED and not row.shortened:
            await self._retry(row, failure, log, delay=0.0, shortened=True)
        else:
            await self._park(row, failure, log)

    async def settle_unexplained(self, row: OutboxRow, error: Exception, log: Log) -> None:
        """An unexpected error is a bug, not weather: retried (as possibly half done) a few
        times, then parked, so it stops holding up its thread."""
        failure = DeliveryFailed(f"error: {type(error).__name__}", uncertain=True)
        if row.attempts >= self._max_unexplained_attempts:
            await self._park(row, failure, log)
        else:
            await self._retry(row, failure, log)

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
        raw = self._backoff_base * float(2 ** max(0, attempts - 1))
        return min(self._backoff_cap, raw) * (0.5 + self._rand())
