"""Wake latency: from an assign's commit to the model's first request for that task.

One process, one event loop: the runner loop (``runner.run()``), the stand-in and the assigns.
Assigns are sequential: each is timed, then its one-step run is awaited before the next. The
start is ``time.monotonic()`` right after ``board.assign_task`` returns (it commits, then
notifies, then returns); the end is the stand-in's ``Recorded.at`` for the task's first request.
Creating the task also commits and wakes the runner, so an assign often meets the runner in an
empty claim pass, as it would in service.
"""

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from bench.agents_rig import Rig, open_rig
from bench.agents_turns import Worker, task_ref
from tests.agents.standins import AnthropicStandIn


@dataclass(frozen=True)
class WakeResult:
    """Seconds from each commit to its first request, and the SQL the whole series sent."""

    latencies_s: list[float]
    sql: dict[str, int]

    def per_assign(self, kind: str) -> float:
        return self.sql.get(kind, 0) / max(1, len(self.latencies_s))


async def measure_wake(directory: Path, assigns: int, within: float) -> WakeResult:
    """``assigns`` sequential assigns with the runner loop running."""
    standin = AnthropicStandIn(Worker(0))
    await standin.start()
    try:
        async with open_rig(directory / "wake.db", standin.url, max_steps=5) as rig:
            rig.start_runner()
            before = rig.sql.snapshot()
            latencies = [await _one_assign(rig, standin, n, within) for n in range(1, assigns + 1)]
            return WakeResult(latencies, dict(rig.sql.snapshot() - before))
    finally:
        await standin.close()


async def _one_assign(rig: Rig, standin: AnthropicStandIn, n: int, within: float) -> float:
    task = await rig.assigned(f"Wake probe {n}")  # returns as soon as assign_task returns
    committed = time.monotonic()
    async with asyncio.timeout(within):
        await rig.until_finished({task.id})
    arrived = next(r.at for r in standin.requests if task_ref(r.body) == str(task.ref))
    return arrived - committed
