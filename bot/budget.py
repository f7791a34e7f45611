"""Rate budgets shared by every replica: token buckets kept where all of them can see them.

A bucket holds up to ``burst`` tokens and refills at ``per_minute / 60`` a second. Taking one
is one transaction in the store, so replicas racing for the last token get it exactly once.
The maths lives here, taking the time as an argument; the store only keeps the numbers.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from bot.clock import Clock

#: Slack's conversations.replies and conversations.history, the reads of a thread or channel.
SLACK_HISTORY = "slack_history"
#: Refills that land within this of a whole token count as one (float sums of elapsed time).
_WHOLE = 1e-9


@dataclass(frozen=True)
class Rate:
    """How fast a bucket refills, and how many tokens it holds at most."""

    per_minute: float
    burst: float

    @classmethod
    def per_minute_bursting(cls, per_minute: float) -> "Rate":
        """At most one minute's worth at once: the probe reads only on a reconcile tick (every
        minute by default), so a smaller bucket would throw away what it refilled between
        ticks. At 1 a minute that is one read, then one more each minute."""
        return cls(per_minute, burst=max(1.0, per_minute))


@dataclass(frozen=True)
class Bucket:
    """A bucket as stored: ``tokens`` as of ``updated_at``."""

    tokens: float
    updated_at: datetime

    def refilled(self, now: datetime, rate: Rate) -> "Bucket":
        """The bucket at ``now``, with what accrued since, up to the burst. A clock behind
        ``updated_at`` (another replica's) adds nothing and moves nothing back."""
        elapsed = max(0.0, (now - self.updated_at).total_seconds())
        tokens = min(rate.burst, self.tokens + elapsed * rate.per_minute / 60)
        return Bucket(tokens, max(self.updated_at, now))

    def wait_for_token(self, rate: Rate) -> float | None:
        """None when a whole token is there; else the seconds until there is one, to the
        microsecond a datetime holds (and never none at all)."""
        if self.tokens >= 1 - _WHOLE:
            return None
        return max(1e-6, round((1 - self.tokens) * 60 / rate.per_minute, 6))

    def taken(self) -> "Bucket":
        """The bucket with one token taken (never below empty)."""
        return Bucket(max(0.0, self.tokens - 1), self.updated_at)


class RateBudgets(Protocol):
    """The buckets, by name, as the store keeps them; each take is its own transaction."""

    async def take_token(self, name: str, rate: Rate, now: datetime) -> float | None:
        """Takes one token from bucket ``name`` (full when first used): None when taken,
        else the seconds until one is due, and nothing is taken."""
        ...


class Budget(Protocol):
    """What a rate-limited caller holds: ask before each call."""

    async def take(self) -> float | None:
        """None: go ahead (a token was taken). Else the seconds to wait before asking again."""
        ...


class SharedBudget:
    """One named bucket at one rate, on the injected clock, shared by every replica."""

    def __init__(self, buckets: RateBudgets, name: str, rate: Rate, clock: Clock) -> None:
        self._buckets = buckets
        self.name = name
        self.rate = rate
        self._clock = clock

    async def take(self) -> float | None:
        return await self._buckets.take_token(self.name, self.rate, self._clock())


class Unmetered:
    """A budget that always says go ahead (a deliverer built by hand in a test)."""

    async def take(self) -> float | None:
        return None
