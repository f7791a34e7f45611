"""What the service counts as it works: the core's port for metrics, and a no-op default.

Counters live in each process (a scrape of every replica adds them up); the gauges that
describe the shared database (backlog, leases, workers) are read from it at scrape time by the
metrics adapter, so every replica reports the same numbers for them.
"""

from typing import Protocol


class Metrics(Protocol):
    """Counted by the core and the adapters; the Prometheus adapter implements it."""

    def outbox_delivered(self, kind: str) -> None:
        """One outbox row was delivered (or settled without a call: coalesced, skipped)."""

    def slack_rate_limited(self, method: str) -> None:
        """Slack answered ``method`` with 429 (ratelimited)."""

    def reconcile_finished(self, seconds: float, actions: dict[str, int]) -> None:
        """A reconcile tick ran for ``seconds``; ``actions`` counts redispatched, blocked and
        deferred tasks."""

    def reconcile_failed(self) -> None:
        """A reconcile tick raised."""

    def event_received(self, duplicate: bool) -> None:
        """An inbound Slack event arrived; ``duplicate`` when it had been processed already."""

    def model_tokens(self, kind: str, count: int) -> None:
        """A built-in agent's model call used ``count`` tokens of ``kind`` (input, output,
        cache_read, cache_creation)."""


class NoMetrics:
    """Counts nothing: for the CLI and tests that do not scrape."""

    def outbox_delivered(self, kind: str) -> None:
        pass

    def slack_rate_limited(self, method: str) -> None:
        pass

    def reconcile_finished(self, seconds: float, actions: dict[str, int]) -> None:
        pass

    def reconcile_failed(self) -> None:
        pass

    def event_received(self, duplicate: bool) -> None:
        pass

    def model_tokens(self, kind: str, count: int) -> None:
        pass
