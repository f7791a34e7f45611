"""The runner: claims agent wake-ups and keeps at most one run per task going.

Wake-ups are rows written in the same transaction as the directive or message that caused them;
any number of runner processes may claim them (SKIP LOCKED on PostgreSQL). A wake-up for a newer
lease epoch cancels the task's current run outright (it may be stuck in a model call) and starts
a fresh one; a person's message during a run is handed to that run at its next step.
"""

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import structlog
from mcp.server.mcpserver import MCPServer

from bot.agent_work import AgentWork
from bot.clock import Clock
from bot.errors import DomainError
from bot.ports import Store
from bot.registry import AgentRegistry
from bot.runtime import prompt
from bot.runtime.model import ToolSpec
from bot.runtime.models import ModelFactory
from bot.runtime.run import AgentRun
from bot.signal import work_loop
from bot.supervisor import Supervisor
from bot.task import Task
from bot.tools import RUNTIME_TOOLS, ToolsFor
from bot.work import Wakeup

logger = structlog.get_logger(__name__)


class ThreadStatus(Protocol):
    """Shows (or clears, with "") a working indicator in the task's thread."""

    async def set_status(self, task: Task, status: str) -> None: ...


@dataclass
class RunHandle:
    epoch: int
    run: AgentRun
    task: asyncio.Task[Any]


@dataclass(frozen=True)
class RunnerSettings:
    max_steps: int = 20
    claim_ttl: float = 600.0
    poll: float = 1.0
    batch: int = 20


class AgentRunner:
    """Runs built-in agents' work in the background of the service."""

    def __init__(
        self,
        store: Store,
        work: AgentWork,
        registry: AgentRegistry,
        tool_server: MCPServer,
        tools_for: ToolsFor,
        models: ModelFactory,
        clock: Clock,
        supervisor: Supervisor,
        worker: str,
        settings: RunnerSettings | None = None,
        thread_status: ThreadStatus | None = None,
    ) -> None:
        self._store = store
        self._work = work
        self._registry = registry
        self._server = tool_server
        self._tools_for = tools_for
        self._models = models
        self._clock = clock
        self._supervisor = supervisor
        self._worker = worker
        self._settings = settings or RunnerSettings()
        self._thread_status = thread_status
        self._runs: dict[int, RunHandle] = {}
        self._specs: list[ToolSpec] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[Any] | None = None
        self._closed = False

    def wake(self) -> None:
        self._wake.set()

    @property
    def active(self) -> dict[int, RunHandle]:
        return dict(self._runs)

    async def run(self) -> None:
        """Claims and starts work until cancelled or closed."""
        self._loop = asyncio.current_task()
        await work_loop(self.run_once, self._wake, self._settings.poll, "runner.failed")

    async def run_once(self) -> int:
        """Claims due wake-ups of built-in agents and acts on them; returns how many."""
        if self._closed:
            return 0
        agents = [
            a.name for a in await self._registry.list_agents_as_stored() if a.built_in and a.enabled
        ]
        now = self._clock()
        until = now + timedelta(seconds=self._settings.claim_ttl)
        async with self._store.transaction() as unit:
            wakeups = await unit.claim_wakeups(
                self._worker, agents, now, until, self._settings.batch
            )
            await unit.finish_wakeups([w.id for w in wakeups], now)
        latest: dict[int, Wakeup] = {}
        for wakeup in wakeups:
            if wakeup.task_id not in latest or wakeup.epoch >= latest[wakeup.task_id].epoch:
                latest[wakeup.task_id] = wakeup
        for wakeup in latest.values():
            await self._take(wakeup)
        return len(wakeups)

    async def _take(self, wakeup: Wakeup) -> None:
        handle = self._runs.get(wakeup.task_id)
        if handle is not None and not handle.task.done():
            if wakeup.epoch <= handle.epoch:
                handle.run.inbox.set()
                return
            handle.task.cancel()
            await asyncio.gather(handle.task, return_exceptions=True)
        await self._start(wakeup)

    async def _start(self, wakeup: Wakeup) -> None:
        async with self._store.read() as reader:
            task = await reader.get_task_by_id(wakeup.task_id)
            agent = await reader.get_agent(wakeup.agent)
        if task is None or agent is None or task.claimed_by != agent.name:
            return
        if task.lease_epoch != wakeup.epoch:
            return  # a newer wake-up for this task is on its way
        try:
            model = await self._models.for_agent(agent)
        except DomainError as exc:
            await self._work.post_update(
                task.ref, agent.name, f":warning: {exc.message}", task.lease_epoch
            )
            return
        run = AgentRun(
            ref=task.ref,
            agent=agent.name,
            epoch=task.lease_epoch,
            reason=wakeup.reason,
            model=model,
            tools=self._tools_for(agent.name, task.lease_epoch, task.ref),
            work=self._work,
            specs=await self._tool_specs(),
            system=prompt.system_prompt(agent.settings.system_prompt),
            autonomy=agent.settings.autonomy,
            max_steps=self._settings.max_steps,
        )
        job = self._supervisor.spawn(
            self._supervised(task, run), name=f"run:{task.ref}:{task.lease_epoch}"
        )
        self._runs[task.id] = RunHandle(task.lease_epoch, run, job)

    async def _supervised(self, task: Task, run: AgentRun) -> str:
        log = logger.bind(task=str(task.ref), agent=run.agent, epoch=run.epoch)
        log.info("run.started", reason=run.reason.value)
        await self._show(task, "is working on it…")
        try:
            outcome = await run.run()
        finally:
            await self._show(task, "")
            handle = self._runs.get(task.id)
            if handle is not None and handle.run is run:
                del self._runs[task.id]
        log.info("run.finished", outcome=outcome)
        return outcome

    async def _show(self, task: Task, status: str) -> None:
        if self._thread_status is not None:
            try:
                await self._thread_status.set_status(task, status)
            except Exception as exc:  # an indicator must never stop the work
                logger.warning("runner.thread_status_failed", error=type(exc).__name__)

    async def _tool_specs(self) -> list[ToolSpec]:
        """The runtime tools' names, descriptions and input schemas, as the tool server lists
        them (a run calls its TaskTools directly)."""
        if not self._specs:
            listed = await self._server.list_tools()
            self._specs = [
                ToolSpec(t.name, t.description or "", dict(t.input_schema))
                for t in listed
                if t.name in RUNTIME_TOOLS
            ]
        return self._specs

    async def close(self) -> None:
        """Claims nothing more and cancels the runs under way (their wake-ups are done; the
        lease of a cancelled run lapses and the reconcile re-dispatches it)."""
        self._closed = True
        if self._loop is not None:
            self._loop.cancel()
        for handle in list(self._runs.values()):
            handle.task.cancel()
        await asyncio.gather(*(h.task for h in self._runs.values()), return_exceptions=True)
        self._runs.clear()
