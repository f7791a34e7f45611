"""APScheduler set-up: the reconcile every interval, one run at a time, missed runs coalesced."""

from datetime import UTC

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.reconcile import Reconciler

logger = structlog.get_logger(__name__)

RECONCILE_JOB_ID = "reconcile"


async def reconcile_job(reconciler: Reconciler) -> None:
    """Runs one reconcile tick; a failure is logged and the next tick tries again."""
    try:
        await reconciler.reconcile_stale_tasks()
    except Exception:
        logger.exception("reconcile.failed")


def build_scheduler(reconciler: Reconciler, interval_s: float) -> AsyncIOScheduler:
    """Returns an unstarted scheduler running the reconcile every ``interval_s`` seconds."""
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
    return scheduler
