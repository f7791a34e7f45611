"""Pacing inside one process: a token bucket on the monotonic clock, paused by a Retry-After.

Outbox delivery keeps one for each channel's posts and one for the workspace's card updates.
They live in memory, so one process keeps its own rhythm (and pauses on a 429) without a
transaction per call. Several replicas on one database also take each call's token from a
bucket they share (:class:`SharedPace`, in ``bot.budget``'s store), so together they stay at
Slack's limits. The time comes from the injected ``monotonic`` and ``sleep``.
"""

import asyncio
from collections.abc import Awaitable, Callable

from bot.budget import Rate, RateBudgets
from bot.clock import Clock

#: Refills that land within this of a whole token count as one (float sums of elapsed time).
_WHOLE = 1e-9


class Pace:
    """A bucket of up to ``rate.burst`` tokens refilling at ``rate.per_minute``; each call takes
    one. It starts full, so the first calls after a quiet spell go at once."""

    def __init__(
        self,
        rate: Rate,
        monotonic: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.rate = rate
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = rate.burst
        #: When ``_tokens`` was counted; in the future while paused.
        self._at = monotonic()
        self._turn = asyncio.Lock()

    async def take(self) -> None:
        """Waits until a whole token is there, and takes it; callers take turns in the order
        they came (the workspace's bucket is shared by every channel)."""
        async with self._turn:
            while (wait := self.wait()) > 0:
                await self._sleep(wait)

    def wait(self) -> float:
        """0.0 when a token was taken; else the seconds until one is due (nothing is taken)."""
        now = self._monotonic()
        if now < self._at:  # paused
            return self._at - now + self._refill_time()
        self._tokens = min(self.rate.burst, self._tokens + (now - self._at) * self._per_second)
        self._at = now
        if self._tokens >= 1 - _WHOLE:
            self._tokens = max(0.0, self._tokens - 1)
            return 0.0
        return self._refill_time()

    def pause(self, seconds: float) -> None:
        """Lets no call through for ``seconds`` (the platform's Retry-After), then one at once
        and the rest at the rate."""
        until = self._monotonic() + seconds
        if until > self._at:
            self._at = until
            self._tokens = 1.0

    @property
    def _per_second(self) -> float:
        return self.rate.per_minute / 60

    def _refill_time(self) -> float:
        return max(0.0, 1 - self._tokens) / self._per_second


class SharedPace:
    """Slack's limits across replicas: before each call, a token from a bucket in the store
    that every replica on the database takes from (one transaction a call). With several
    replicas, each one's own :class:`Pace` alone would let them post in one channel at the
    rate times the replicas; this keeps the channel at the rate, wherever its rows go out."""

    def __init__(
        self, buckets: RateBudgets, clock: Clock, sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        self._buckets = buckets
        self._clock = clock
        self._sleep = sleep

    async def take(self, name: str, rate: Rate) -> None:
        """Waits until bucket ``name`` has a token at ``rate``, and takes it."""
        while (wait := await self._buckets.take_token(name, rate, self._clock())) is not None:
            await self._sleep(wait)
