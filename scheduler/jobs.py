"""APScheduler set-up: the reconcile every interval, one run at a time, missed runs coalesced;
hourly pruning of what is remembered for a day (inbound event ids, agents' idempotency keys)."""

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
PRUNE_TOOL_REQUESTS_JOB_ID = "prune_tool_requests"
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
    await _prune(PRUNE_JOB_ID, prune)


async def prune_tool_requests_job(prune: Callable[[], Awaitable[int]]) -> None:
    """Forgets agents' old idempotency keys; a failure waits for the next run."""
    await _prune(PRUNE_TOOL_REQUESTS_JOB_ID, prune)


async def _prune(name: str, prune: Callable[[], Awaitable[int]]) -> None:
    """Runs ``prune``, logged as ``<name>.done`` or ``<name>.failed``, never raising."""
    try:
        forgotten = await prune()
    except Exception:
        logger.exception(f"{name}.failed")
        return
    logger.info(f"{name}.done", forgotten=forgotten)


def build_scheduler(
    reconciler: Reconciler,
    interval_s: float,
    prune: Callable[[], Awaitable[int]] | None = None,
    metrics: Metrics | None = None,
    prune_tool_requests: Callable[[], Awaitable[int]] | None = None,
) -> AsyncIOScheduler:
    """Returns an unstarted scheduler: the reconcile every ``interval_s`` s (timed and counted
    in ``metrics``); ``prune`` (inbound event ids) and ``prune_tool_requests`` hourly."""
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
    pruning = {
        PRUNE_JOB_ID: (prune_inbound_event_ids_job, prune),
        PRUNE_TOOL_REQUESTS_JOB_ID: (prune_tool_requests_job, prune_tool_requests),
    }
    for job_id, (job, pruner) in pruning.items():
        if pruner is not None:
            scheduler.add_job(
                job,
                "interval",
                seconds=PRUNE_INTERVAL_S,
                args=[pruner],
                id=job_id,
                max_instances=1,
                coalesce=True,
            )
    return scheduler
