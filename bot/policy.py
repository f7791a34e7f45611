"""Lease policy per channel: a channel may override the global TTL and dispatch attempts."""

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from bot.access import Closers
from bot.task import LeasePolicy


@dataclass(frozen=True)
class ChannelPolicy:
    """A channel's overrides; None falls back to the global setting."""

    channel_id: str
    lease_ttl_s: float | None = None
    max_dispatch_attempts: int | None = None
    #: Whether agents may set ``done`` themselves here (default: no, a person closes).
    agents_may_close: bool | None = None
    #: Who may close a task here: ``owners`` (the default) or ``anyone`` in the channel.
    closers: str | None = None


@dataclass(frozen=True)
class PolicyBook:
    """The global policy and every channel's overrides, read once per use."""

    default: LeasePolicy
    channels: dict[str, ChannelPolicy]

    def for_channel(self, channel_id: str) -> LeasePolicy:
        """The policy in force in ``channel_id``."""
        override = self.channels.get(channel_id)
        if override is None:
            return self.default
        policy = self.default
        if override.lease_ttl_s is not None:
            policy = replace(policy, lease_ttl=timedelta(seconds=override.lease_ttl_s))
        if override.max_dispatch_attempts is not None:
            policy = replace(policy, max_dispatch_attempts=override.max_dispatch_attempts)
        return policy

    def agents_may_close(self, channel_id: str) -> bool:
        override = self.channels.get(channel_id)
        return bool(override and override.agents_may_close)

    def closers(self, channel_id: str) -> Closers:
        """Who may close a task in ``channel_id``."""
        override = self.channels.get(channel_id)
        return Closers(override.closers) if override and override.closers else Closers.OWNERS

    def stale_cutoffs(self, now: datetime) -> tuple[datetime, dict[str, datetime]]:
        """The progress time before which a lease has lapsed: everywhere by default, and in
        each channel whose TTL differs."""
        default = now - self.default.lease_ttl
        own = {c: now - self.for_channel(c).lease_ttl for c in self.channels}
        return default, {c: at for c, at in own.items() if at != default}

    @property
    def shortest_ttl(self) -> timedelta:
        """The shortest TTL in force anywhere: the widest cutoff a stale scan needs."""
        return min(
            [self.default.lease_ttl] + [self.for_channel(c).lease_ttl for c in self.channels]
        )


class PolicyReader(Protocol):
    async def list_channel_policies(self) -> list[ChannelPolicy]: ...


async def load_policy_book(reader: PolicyReader, default: LeasePolicy) -> PolicyBook:
    """Reads every channel override once and pairs them with the global policy."""
    overrides = await reader.list_channel_policies()
    return PolicyBook(default, {policy.channel_id: policy for policy in overrides})
