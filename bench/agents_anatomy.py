"""Where a step's CPU goes: each part of a step, timed alone, one call at a time.

A step of a run is: a claim check before the model call (a read transaction), the streamed model
request through the SDK (and the INFO line httpx2 logs for it), the usage write, a claim check
after, and the tool call (post_update through ``TaskTools.call``, in-process as the runtime makes
it: arguments checked against the tool's signature, its own write transaction). A commit that
queues a wake-up also wakes the runner for a claim pass. The stand-in serves from its own
process, so only this process's CPU is counted.
"""

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.agents_rig import AGENT, Rig, open_rig
from bench.agents_standin_process import standin_process
from bot.runtime.model import AgentModel, ToolSpec
from bot.task import Task
from bot.tools import RUNTIME_TOOLS, Done, TaskTools
from bot.work import Usage
from channels.mcp.task_server import build_tool_server

Call = Callable[[int], Awaitable[object]]


@dataclass(frozen=True)
class Part:
    """One part of a step: how often a step does it (0: on wake-ups), its mean CPU and wall."""

    name: str
    per_step: int
    cpu_ms: float
    wall_ms: float


async def measure_anatomy(directory: Path, repeats: int) -> list[Part]:
    """Times each part of a step ``repeats`` times, sequentially, after one warm-up call."""
    async with (
        standin_process(updates=10 * repeats) as standin,
        open_rig(directory / "anatomy.db", standin.url, max_steps=5) as rig,
    ):
        parts = await StepParts.build(rig, await rig.assigned("Anatomy probe"))
        return [await _timed(name, n, call, repeats) for name, n, call in parts.catalogue()]


async def _timed(name: str, per_step: int, call: Call, repeats: int) -> Part:
    await call(0)
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(1, repeats + 1):
        await call(n)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return Part(name, per_step, 1000 * cpu / repeats, 1000 * wall / repeats)


@dataclass
class StepParts:
    """The calls a step makes, against one assigned task, each callable on its own."""

    rig: Rig
    task: Task
    model: AgentModel
    specs: list[ToolSpec]
    #: The run's tool set, pinned to the task's epoch, as the runner builds it.
    caller: TaskTools

    @classmethod
    async def build(cls, rig: Rig, task: Task) -> "StepParts":
        async with rig.core.store.read() as reader:
            agent = await reader.get_agent(AGENT)
        assert agent is not None
        model = await rig.models.for_agent(agent)
        # The runner lists its tools from a tool server once, like this; it never calls it.
        specs = [
            ToolSpec(t.name, t.description or "", dict(t.input_schema))
            for t in await build_tool_server(_no_remote_callers).list_tools()
            if t.name in RUNTIME_TOOLS
        ]
        caller = rig.core.tools_for(AGENT, task.lease_epoch)
        return cls(rig, task, model, specs, caller)

    def catalogue(self) -> list[tuple[str, int, Call]]:
        return [
            ("claim check (read transaction, get_task)", 1, self.claim_check),
            ("model request (anthropic SDK, streamed)", 1, self.model_request),
            (
                "httpx2 INFO line (its logger is at WARNING, as serve sets it)",
                1,
                self.http_log_line,
            ),
            ("usage write with the claim check (record_usage transaction)", 1, self.usage_write),
            ("post_update tool call (TaskTools.call, write transaction)", 1, self.tool_call),
            ("runner claim pass finding nothing (run_once)", 0, self.claim_pass),
        ]

    async def claim_check(self, _n: int) -> object:
        async with self.rig.core.store.read() as reader:
            return await reader.get_task(self.task.ref)

    async def model_request(self, _n: int) -> object:
        opening = (
            f"Directive: work on task {self.task.ref}, lease epoch {self.task.lease_epoch}, "
            "attempt 1. Its status is todo."
        )
        messages = [{"role": "user", "content": opening}]
        return await self.model.complete("You are a benchmark agent.", self.specs, messages, _idle)

    async def http_log_line(self, _n: int) -> None:
        logging.getLogger("httpx2").info('HTTP Request: %s %s "%s"', "POST", "/v1/messages", 200)

    async def usage_write(self, _n: int) -> None:
        await self.rig.core.work.record_usage(
            self.task.ref, self.task.claimed_by or "", self.task.lease_epoch, Usage(10, 5, 100, 10)
        )

    async def tool_call(self, n: int) -> object:
        arguments = {"task": str(self.task.ref), "text": f"Step {n}"}
        result = await self.caller.call("post_update", arguments)
        if not isinstance(result, Done):
            raise AssertionError(f"post_update was refused: {result}")
        return result

    async def claim_pass(self, _n: int) -> int:
        return await self.rig.runner.run_once()


async def _idle() -> None:
    return None


async def _no_remote_callers(_headers: Mapping[str, str] | None) -> TaskTools:
    raise AssertionError("the tool server here only lists the tools")
