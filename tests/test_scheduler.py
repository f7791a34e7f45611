"""The reconcile job's wiring: one instance at a time, coalesced, and a failure is not fatal."""

from datetime import timedelta

import structlog

from bot.board import Board
from bot.reconcile import Reconciler
from bot.registry import AgentRegistry
from bot.task import Actor
from scheduler.jobs import (
    PRUNE_JOB_ID,
    RECONCILE_JOB_ID,
    build_scheduler,
    prune_inbound_event_ids_job,
    reconcile_job,
)
from tests.conftest import FakeClock


def test_the_reconcile_runs_every_interval_single_flight_and_coalesced(
    reconciler: Reconciler,
) -> None:
    scheduler = build_scheduler(reconciler, interval_s=2.5)
    job = scheduler.get_job(RECONCILE_JOB_ID)
    assert job.trigger.interval == timedelta(seconds=2.5)
    assert (job.max_instances, job.coalesce) == (1, True)
    assert job.args == (reconciler,)


async def test_the_job_runs_one_reconcile_tick(
    board: Board, registry: AgentRegistry, reconciler: Reconciler, clock: FakeClock
) -> None:
    await registry.add_agent("coder")
    task = await board.create_task("C1", "t", Actor.user("U1"))
    await board.assign_task(task.ref, "coder", "U1")
    clock.advance(601)
    with structlog.testing.capture_logs() as logs:
        await reconcile_job(reconciler)
    assert {"event": "reconcile.tick", "log_level": "info"}.items() <= logs[0].items()
    assert logs[0]["redispatched"] == 1


class Exploding:
    async def reconcile_stale_tasks(self) -> None:
        raise RuntimeError("database went away")


async def test_a_failing_tick_is_logged_and_leaves_the_next_tick_to_try_again() -> None:
    with structlog.testing.capture_logs() as logs:
        await reconcile_job(Exploding())  # type: ignore[arg-type]  # duck-typed stand-in
    assert logs[0]["event"] == "reconcile.failed"
    assert logs[0]["log_level"] == "error"


def test_pruning_runs_hourly_when_given(reconciler: Reconciler) -> None:
    async def prune() -> int:
        return 0

    scheduler = build_scheduler(reconciler, interval_s=60, prune=prune)
    job = scheduler.get_job(PRUNE_JOB_ID)
    assert job.trigger.interval == timedelta(hours=1)
    assert (job.max_instances, job.coalesce) == (1, True)


async def test_a_failing_prune_is_logged_not_raised() -> None:
    async def prune() -> int:
        raise RuntimeError("locked")

    with structlog.testing.capture_logs() as logs:
        await prune_inbound_event_ids_job(prune)
    assert logs[0]["event"] == "prune_inbound_event_ids.failed"
