"""Prometheus metrics: the core's ``Metrics`` port as counters, and ``GET /metrics``.

Counters and the reconcile histogram live in this process. The gauges that describe the shared
database (backlog, dead rows, leases, workers) are read from it at each scrape, so every
replica reports the same numbers; the agent runs in flight are this process's own. Each
service has its own registry, never prometheus_client's global one, so several services in one
process (tests, benchmarks) keep their counts apart.
"""

from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from bot.gauges import ServiceGauges

logger = structlog.get_logger(__name__)

#: Reconcile ticks take milliseconds when nothing lapsed and up to minutes reading threads.
RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

ReadGauges = Callable[[], Awaitable[ServiceGauges]]


class PrometheusMetrics:
    """Implements ``bot.metrics.Metrics`` on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._scraped = ScrapeGauges()
        self.registry.register(self._scraped)
        self._delivered = self._counter(
            "threadwork_outbox_delivered", "Outbox rows delivered (or settled unsent).", "kind"
        )
        self._rate_limited = self._counter(
            "threadwork_slack_ratelimited", "Slack Web API calls answered 429.", "method"
        )
        self._reconcile_actions = self._counter(
            "threadwork_reconcile_actions", "Tasks reconcile ticks acted on.", "action"
        )
        self._reconcile_failures = self._counter(
            "threadwork_reconcile_failures", "Reconcile ticks that raised."
        )
        self._events = self._counter("threadwork_events_received", "Slack events received.")
        self._duplicates = self._counter(
            "threadwork_events_duplicate", "Slack events received again (redeliveries)."
        )
        self._tokens = self._counter(
            "threadwork_model_tokens", "Model tokens built-in agents used.", "kind"
        )
        self._reconcile_duration = Histogram(
            "threadwork_reconcile_duration_seconds",
            "How long reconcile ticks took.",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def outbox_delivered(self, kind: str) -> None:
        self._delivered.labels(kind=kind).inc()

    def slack_rate_limited(self, method: str) -> None:
        self._rate_limited.labels(method=method).inc()

    def reconcile_finished(self, seconds: float, actions: dict[str, int]) -> None:
        self._reconcile_duration.observe(seconds)
        for action, count in actions.items():
            self._reconcile_actions.labels(action=action).inc(count)

    def reconcile_failed(self) -> None:
        self._reconcile_failures.inc()

    def event_received(self, duplicate: bool) -> None:
        self._events.inc()
        if duplicate:
            self._duplicates.inc()

    def model_tokens(self, kind: str, count: int) -> None:
        self._tokens.labels(kind=kind).inc(count)

    def render(self, gauges: ServiceGauges | None, runs_active: int) -> bytes:
        """The text exposition, with this scrape's gauges (none from the database when it
        could not be read)."""
        self._scraped.reading = (gauges, runs_active)
        return generate_latest(self.registry)


class ScrapeGauges:
    """A collector for the gauges read at scrape time; it reports the last reading given."""

    def __init__(self) -> None:
        self.reading: tuple[ServiceGauges | None, int] = (None, 0)

    def describe(self) -> Iterable[Metric]:
        """The names it reports, so the registry refuses a counter that would clash."""
        return _families(None, 0)

    def collect(self) -> Iterable[Metric]:
        return _families(*self.reading)


def _families(gauges: ServiceGauges | None, runs_active: int) -> list[Metric]:
    runs = GaugeMetricFamily("threadwork_agent_runs_active", "Built-in agent runs in flight here.")
    runs.add_metric([], runs_active)
    families: list[Metric] = [runs]
    pending = GaugeMetricFamily(
        "threadwork_outbox_pending", "Outbox rows still to be sent.", labels=["kind"]
    )
    oldest = GaugeMetricFamily(
        "threadwork_outbox_oldest_age_seconds",
        "Age of the oldest outbox row still to be sent.",
        labels=["kind"],
    )
    dead = GaugeMetricFamily("threadwork_outbox_dead", "Outbox rows refused for good.")
    leases = GaugeMetricFamily("threadwork_leases", "Leased tasks by state.", labels=["state"])
    workers = GaugeMetricFamily("threadwork_workers_alive", "Workers with a fresh heartbeat.")
    families += [pending, oldest, dead, leases, workers]
    if gauges is None:
        return families
    for kind, count in gauges.outbox_pending.items():
        pending.add_metric([kind.value], count)
        oldest.add_metric([kind.value], gauges.outbox_oldest_age_s[kind])
    dead.add_metric([], gauges.outbox_dead)
    for state, count in gauges.leases.items():
        leases.add_metric([state.value], count)
    workers.add_metric([], gauges.workers_alive)
    return families


def metrics_routes(
    metrics: PrometheusMetrics, read_gauges: ReadGauges, runs_active: Callable[[], int]
) -> list[web.RouteDef]:
    """``GET /metrics``: the Prometheus text format. When the database does not answer, the
    counters are still served and the database's gauges are left out (so "absent" alerts)."""

    async def scrape(_request: web.Request) -> web.Response:
        try:
            gauges: ServiceGauges | None = await read_gauges()
        except Exception as exc:
            logger.warning("metrics.gauges_unavailable", error=type(exc).__name__)
            gauges = None
        body = metrics.render(gauges, runs_active())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/metrics", scrape)]
