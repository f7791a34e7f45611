"""Steps per second: assigned tasks worked at once by ``runner.run()``, in three wirings.

Every task is created and assigned first; then the runner starts and the clock runs until every
run has ended. The stand-in serves from its own process, so this process's CPU time is the
runtime's alone (runner, runs, SDK client, SQLite driver threads, logging).
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from bench.agents_rig import CLAIM_QUERIES, Rig, open_rig
from bench.agents_standin_process import RemoteStandIn, standin_process


class Variant(StrEnum):
    """How the runtime is wired for a round."""

    #: As ``serve`` wires it.
    AS_WIRED = "as wired"
    #: The stdlib root logger at WARNING, so that no library's INFO line is formatted.
    QUIET_ROOT_LOGGER = "root logger at WARNING"
    #: The runner woken by no commit, only its poll (``Overrides.runner_wakes_on_commit``).
    NO_COMMIT_WAKE = "runner not woken by commits"


@dataclass(frozen=True)
class ThroughputResult:
    """One round: how long ``tasks`` runs of ``updates + 1`` steps each took, and at what cost."""

    variant: Variant
    tasks: int
    updates: int
    finished: bool
    requests: int
    elapsed_s: float
    server_cpu_s: float
    standin_cpu_s: float
    peak_runs: int
    in_review: int
    outcomes: dict[str, int]
    sql: dict[str, int]

    @property
    def steps_per_s(self) -> float:
        return self.requests / self.elapsed_s

    @property
    def cpu_per_step_ms(self) -> float:
        return 1000 * self.server_cpu_s / max(1, self.requests)

    def per_step(self, kind: str) -> float:
        """SQL statements of ``kind`` (e.g. ``BEGIN IMMEDIATE``) per model request."""
        return self.sql.get(kind, 0) / max(1, self.requests)

    @property
    def claims_per_step(self) -> float:
        return self.per_step(CLAIM_QUERIES)


async def measure_throughput(
    directory: Path, tasks: int, updates: int, within: float, variant: Variant
) -> ThroughputResult:
    """Assigns ``tasks`` tasks, then times ``runner.run()`` working them all to in_review."""
    database = directory / f"throughput-{time.monotonic_ns()}.db"
    wake_on_commit = variant != Variant.NO_COMMIT_WAKE
    quiet = logging.WARNING if variant == Variant.QUIET_ROOT_LOGGER else None
    async with (
        standin_process(updates) as standin,
        open_rig(database, standin.url, updates + 5, wake_on_commit) as rig,
    ):
        with root_logger_level(quiet):
            return await _round(rig, standin, tasks, updates, within, variant)


async def _round(
    rig: Rig, standin: RemoteStandIn, tasks: int, updates: int, within: float, variant: Variant
) -> ThroughputResult:
    ids = {(await rig.assigned(f"Benchmark task {n}")).id for n in range(1, tasks + 1)}
    before, sql_before = await standin.tally(), rig.sql.snapshot()
    cpu, started = time.process_time(), time.perf_counter()
    rig.start_runner()
    outcomes, finished = await _bounded(rig.until_finished(ids), within)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    sql = rig.sql.snapshot() - sql_before
    after = await standin.tally()
    return ThroughputResult(
        variant=variant,
        tasks=tasks,
        updates=updates,
        finished=finished,
        requests=after.requests - before.requests,
        elapsed_s=elapsed,
        server_cpu_s=cpu,
        standin_cpu_s=after.cpu_seconds - before.cpu_seconds,
        peak_runs=rig.watcher.peak,
        in_review=await rig.count_in_status("in_review"),
        outcomes=dict(Counter(outcomes)),
        sql=dict(sql),
    )


@contextlib.contextmanager
def root_logger_level(level: int | None) -> Iterator[None]:
    """Sets the stdlib root logger's level for the block (no change when None)."""
    root = logging.getLogger()
    before = root.level
    if level is not None:
        root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


async def _bounded(waiting: Awaitable[list[str]], within: float) -> tuple[list[str], bool]:
    try:
        async with asyncio.timeout(within):
            return await waiting, True
    except TimeoutError:
        return [], False
