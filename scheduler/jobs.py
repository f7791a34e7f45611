"""APScheduler set-up: the reconcile every interval, one run at a time, missed runs coalesced."""

import time
from collections.abc import Awaitable, Callable
from datetime import UTC

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.metrics import Metrics, NoMetrics
from bot.reconcile import Reconciler, ReconcileReport

logger = structlog.get_logger(__name__)

RECONCILE_JOB_ID = "reconcile"
PRUNE_JOB_ID = "prune_inbound_event_ids"
PRUNE_INTERVAL_S = 3600.0


async def reconcile_job(
    reconciler: Reconciler,
    metrics: Metrics | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Runs one reconcile tick, timed and counted; a failure is logged and counted, and the
    next tick tries again."""
    metrics = metrics or NoMetrics()
    started = monotonic()
    try:
        report = await reconciler.reconcile_stale_tasks()
    except Exception:
        logger.exception("reconcile.failed")
        metrics.reconcile_failed()
        return
    metrics.reconcile_finished(monotonic() - started, reconcile_actions(report))


def reconcile_actions(report: ReconcileReport) -> dict[str, int]:
    """What a tick did, by the action metrics count."""
    return {
        "redispatched": len(report.redispatched),
        "blocked": len(report.blocked),
        "deferred": report.deferred,
    }


async def prune_inbound_event_ids_job(prune: Callable[[], Awaitable[int]]) -> None:
    """Forgets old inbound event ids; a failure waits for the next run."""
    try:
        forgotten = await prune()
    except Exception:
        logger.exception("prune_inbound_event_ids.failed")
        return
    logger.info("prune_inbound_event_ids.done", forgotten=forgotten)


def build_scheduler(
    reconciler: Reconciler,
    interval_s: float,
    prune: Callable[[], Awaitable[int]] | None = None,
    metrics: Metrics | None = None,
) -> AsyncIOScheduler:
    """Returns an unstarted scheduler: the reconcile every ``interval_s`` s (timed and counted
    in ``metrics``), pruning hourly."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        reconcile_job,
        "interval",
        seconds=interval_s,
        args=[reconciler],
        kwargs={"metrics": metrics},
        id=RECONCILE_JOB_ID,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(interval_s)),
    )
    if prune is not None:
        scheduler.add_job(
            prune_inbound_event_ids_job,
            "interval",
            seconds=PRUNE_INTERVAL_S,
            args=[prune],
            id=PRUNE_JOB_ID,
            max_instances=1,
            coalesce=True,
        )
    return scheduler
