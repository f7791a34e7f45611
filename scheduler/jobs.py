"""APScheduler set-up: the reconcile every interval, one run at a time, missed runs coalesced."""

from collections.abc import Awaitable, Callable
from datetime import UTC

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.reconcile import Reconciler

logger = structlog.get_logger(__name__)

RECONCILE_JOB_ID = "reconcile"
PRUNE_JOB_ID = "prune_inbound_event_ids"
PRUNE_INTERVAL_S = 3600.0


async def reconcile_job(reconciler: Reconciler) -> None:
    """Runs one reconcile tick; a failure is logged and the next tick tries again."""
    try:
        await reconciler.reconcile_stale_tasks()
    except Exception:
        logger.exception("reconcile.failed")


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
) -> AsyncIOScheduler:
    """Returns an unstarted scheduler: the reconcile every ``interval_s`` s, pruning hourly."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        reconcile_job,
        "interval",
        seconds=interval_s,
        args=[reconciler],
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
