"""Times one reconcile tick, over and over, each time on a freshly armed stale set.

Every tick is checked to have redispatched and blocked exactly the armed tasks, so a tick that
acts on nothing (or on the wrong tasks) stops the benchmark instead of looking fast.
"""

import statistics
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncEngine

from bench.backends import settle
from bench.plans import Plan, TickStatements, capturing, explain
from bench.population import NOW, POLICY, StaleRows, StaleSet, arm_stale, count_stale
from bot.reconcile import Reconciler, ReconcileReport
from bot.root import Overrides, build_core
from bot.settings import Settings

#: The service's settings for the benchmark's lease policy (the database is the engine given).
SETTINGS = Settings(
    THREADWORK_LEASE_TTL=POLICY.lease_ttl.total_seconds(),
    THREADWORK_MAX_DISPATCH_ATTEMPTS=POLICY.max_dispatch_attempts,
)


class WrongTick(AssertionError):
    """A tick did not act on exactly the stale set, so its time measures nothing."""


@dataclass(frozen=True)
class TickResult:
    """The timed ticks over ``tasks`` tasks of which ``stale`` were stale, on ``backend``."""

    backend: str
    tasks: int
    stale: StaleSet
    seconds: list[float]
    #: CPU time of this process (event loop and SQLite's thread) per timed tick: what the
    #: tick costs the service, and less sensitive than wall time to other load on the machine.
    cpu_seconds: list[float]
    #: The untimed first tick: cold caches, statements not yet compiled.
    warmup_seconds: float
    plans: list[Plan] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)


class Timing(NamedTuple):
    """One tick's wall-clock and CPU seconds."""

    wall: float
    cpu: float


#: The stale set of a measurement not yet prepared.
_NOT_ARMED = StaleSet(0, 0)


@dataclass
class Measurement:
    """Ticks over one database and stale set, taken one at a time so sizes can interleave."""

    engine: AsyncEngine
    backend: str
    tasks: int
    #: The tasks armed stale before each tick.
    rows: StaleRows
    stale: StaleSet = _NOT_ARMED
    warmup_seconds: float = 0.0
    plans: list[Plan] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)

    async def prepare(self) -> None:
        """Ticks once untimed and explains its statements on the re-armed set, then clears it.

        The set is cleared by another untimed tick, so no stale task is left for the other
        measurements on the same database.
        """
        statements = TickStatements()
        self.stale, warmup = await _timed_tick(self.engine, self.rows, statements)
        self.warmup_seconds = warmup.wall
        await arm_stale(self.engine, self.rows)
        await settle(self.engine)
        self.plans = await _explain(self.engine, statements)
        await _timed_tick(self.engine, self.rows)

    async def tick(self) -> None:
        """Times one more tick; it must act on the same stale set as the first."""
        stale, timing = await _timed_tick(self.engine, self.rows)
        if stale != self.stale:
            raise WrongTick(f"armed {stale}, but the first tick of this set had {self.stale}")
        self.timings.append(timing)

    def result(self) -> TickResult:
        return TickResult(
            self.backend,
            self.tasks,
            self.stale,
            [t.wall for t in self.timings],
            [t.cpu for t in self.timings],
            self.warmup_seconds,
            self.plans,
        )


async def _explain(engine: AsyncEngine, statements: TickStatements) -> list[Plan]:
    return [await explain(engine, title, statement) for title, statement in statements.titled()]


async def _timed_tick(
    engine: AsyncEngine, rows: StaleRows, statements: TickStatements | None = None
) -> tuple[StaleSet, Timing]:
    """Arms the stale set, then times one tick, recording its statements into ``statements``."""
    stale = await arm_stale(engine, rows)
    await settle(engine)
    reconciler = _reconciler(engine)
    with capturing(engine, statements):
        wall, cpu = time.perf_counter(), time.process_time()
        report = await reconciler.reconcile_stale_tasks()
        timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)
    await _check(engine, stale, report)
    return stale, timing


def _reconciler(engine: AsyncEngine) -> Reconciler:
    """The service's one reconcile, from the composition root, on a clock fixed at ``NOW``."""
    return build_core(SETTINGS, engine, Overrides(clock=lambda: NOW)).reconciler


async def _check(engine: AsyncEngine, stale: StaleSet, report: ReconcileReport) -> None:
    acted = StaleSet(redispatch=len(report.redispatched), block=len(report.blocked))
    others = report.skipped or report.renewed or report.deferred or report.assumed
    if stale.size == 0 or acted != stale or others:
        raise WrongTick(f"armed {stale}, but the tick did {acted} and {report}")
    async with engine.connect() as connection:
        left = await count_stale(connection)
    if left.size:
        raise WrongTick(f"{left.size} tasks are still stale after the tick")
