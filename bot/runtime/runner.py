"""The runner: claims agent wake-ups and keeps at most one run per task going.

Wake-ups are rows written in the same transaction as the directive or message that caused them;
any number of runner processes may claim them (SKIP LOCKED on PostgreSQL). The wake-up that
starts a run stays held by this worker until the run ends, so if the process dies, the takeover
(``bot.workers``) makes it claimable and another runner resumes the run; a clean shutdown hands
it back at once. A wake-up for a newer lease epoch cancels the task's current run outright (it
may be stuck in a model call) and starts a fresh one; a person's message during a run is handed
to that run at its next step.
"""

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from bot.agent_work import AgentWork
from bot.agents import Agent
from bot.clock import Clock
from bot.errors import DomainError
from bot.ports import Store
from bot.registry import AgentRegistry
from bot.runtime import prompt
from bot.runtime.model import AgentModels, ToolSpec
from bot.runtime.run import AgentRun, ServerOpener
from bot.runtime.stream import ThreadStreams
from bot.runtime.toolbox import ToolBox, ToolBoxSettings, ToolConnector, open_toolbox
from bot.signal import work_loop
from bot.supervisor import Supervisor
from bot.task import Task
from bot.tools import RUNTIME_TOOLS, ToolsFor
from bot.work import Wakeup

logger = structlog.get_logger(__name__)

#: How long cancelled runs get to end, at a shutdown or when this worker lost its claims.
CANCEL_WAIT_S = 5.0


class ListedTool(Protocol):
    """One tool as a tool server lists it."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str | None: ...

    @property
    def input_schema(self) -> dict[str, Any]: ...


class ToolListing(Protocol):
    """Lists the runtime tools with their schemas: the MCP front door's server
    (``channels.mcp.task_server``), asked once; nothing is called through it."""

    async def list_tools(self) -> Sequence[ListedTool]: ...


@dataclass
class RunHandle:
    epoch: int
    run: AgentRun
    task: asyncio.Task[Any]
    #: The wake-up that started the run, held until the run ends.
    wakeup_id: int


@dataclass(frozen=True)
class RunnerSettings:
    max_steps: int = 20
    poll: float = 1.0
    batch: int = 20
    #: Timeouts and bounds of the agents' MCP tool servers.
    toolbox: ToolBoxSettings = field(default_factory=ToolBoxSettings)


class AgentRunner:
    """Runs built-in agents' work in the background of the service."""

    def __init__(
        self,
        store: Store,
        work: AgentWork,
        registry: AgentRegistry,
        tool_server: ToolListing,
        tools_for: ToolsFor,
        models: AgentModels,
        clock: Clock,
        supervisor: Supervisor,
        worker: str,
        settings: RunnerSettings | None = None,
        streams: ThreadStreams | None = None,
        tool_servers: ToolConnector | None = None,
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
        self._streams = streams
        self._connector = tool_servers
        self._runs: dict[int, RunHandle] = {}
        self._specs: list[ToolSpec] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[Any] | None = None
        self._closed = False
        #: Set when this worker was presumed dead: its runs were taken over elsewhere.
        self._abandoned = False

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
        await self._cancel_moved_on()
        agents = [
            a.name for a in await self._registry.list_agents_as_stored() if a.built_in and a.enabled
        ]
        if not agents:
            return 0  # no built-in agent: nothing this runner could claim
        async with self._store.transaction() as unit:
            wakeups = await unit.claim_wakeups(self._worker, agents, self._settings.batch)
        latest: dict[int, Wakeup] = {}
        for wakeup in wakeups:
            if wakeup.task_id not in latest or wakeup.epoch >= latest[wakeup.task_id].epoch:
                latest[wakeup.task_id] = wakeup
        held = {w.id for w in latest.values() if await self._take(w)}
        done = [w.id for w in wakeups if w.id not in held]
        if done:
            async with self._store.transaction() as unit:
                await unit.finish_wakeups(done, self._clock())
        return len(wakeups)

    async def _cancel_moved_on(self) -> None:
        """Cancels the runs whose task moved on: stopped, reassigned or re-dispatched, perhaps
        through another replica, whose wake-up this runner never sees. A run stuck in a model
        call stops here at once rather than at its next step."""
        if not self._runs:
            return
        async with self._store.read() as reader:
            current = {t.id: t for t in await reader.get_tasks_by_ids(list(self._runs))}
        for task_id, handle in list(self._runs.items()):
            task = current.get(task_id)
            held = task is not None and task.claimed_by == handle.run.agent
            if not held or task is None or task.lease_epoch != handle.epoch:
                logger.info("run.moved_on", task=str(handle.run.ref), epoch=handle.epoch)
                handle.task.cancel()

    async def _take(self, wakeup: Wakeup) -> bool:
        """Acts on the task's latest wake-up; True when it started a run (which holds it)."""
        handle = self._runs.get(wakeup.task_id)
        if handle is not None and not handle.task.done():
            if wakeup.epoch <= handle.epoch:
                handle.run.inbox.set()
                return False
            handle.task.cancel()
            await asyncio.gather(handle.task, return_exceptions=True)
        return await self._start(wakeup)

    async def _start(self, wakeup: Wakeup) -> bool:
        async with self._store.read() as reader:
            task = await reader.get_task_by_id(wakeup.task_id)
            agent = await reader.get_agent(wakeup.agent)
        if task is None or agent is None or task.claimed_by != agent.name:
            return False
        if task.lease_epoch != wakeup.epoch:
            return False  # a newer wake-up for this task is on its way
        try:
            model = await self._models.for_agent(agent)
        except DomainError as exc:
            await self._work.post_update(
                task.ref, agent.name, f":warning: {exc.message}", task.lease_epoch
            )
            return False
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
            streams=self._streams,
            display_name=agent.display_name,
            servers=self._servers_for(agent),
        )
        job = self._supervisor.spawn(
            self._supervised(task, run, wakeup.id), name=f"run:{task.ref}:{task.lease_epoch}"
        )
        self._runs[task.id] = RunHandle(task.lease_epoch, run, job, wakeup.id)
        return True

    async def _supervised(self, task: Task, run: AgentRun, wakeup_id: int) -> str:
        log = logger.bind(task=str(task.ref), agent=run.agent, epoch=run.epoch)
        log.info("run.started", reason=run.reason.value)
        try:
            outcome = await run.run()
        finally:
            handle = self._runs.get(task.id)
            if handle is not None and handle.run is run:
                del self._runs[task.id]
            if not (self._closed or self._abandoned):
                # Ended or superseded: its wake-up is done. (At shutdown ``close`` hands it
                # back instead, and a worker presumed dead has lost it already.)
                await self._finish(wakeup_id, log, run.session_unknown)
        log.info("run.finished", outcome=outcome)
        return outcome

    async def _finish(
        self, wakeup_id: int, log: structlog.typing.FilteringBoundLogger, session_unknown: bool
    ) -> None:
        try:
            await self._work.end_run(wakeup_id, session_unknown)
        except Exception:
            # Still held by a live worker: only a takeover after this process ends would
            # start the run again, and the lease is the truth about the task meanwhile.
            log.exception("run.finish_failed", wakeup=wakeup_id)

    def _servers_for(self, agent: Agent) -> ServerOpener | None:
        """Opens the agent's MCP tool servers for a run: started inside the run (so a slow one
        holds up no other task), stopped when it ends."""
        connector = self._connector
        if connector is None:
            return None

        @asynccontextmanager
        async def opened() -> AsyncIterator[ToolBox]:
            launches = await self._registry.tool_servers.launches(agent.name)
            spawn, settings = self._supervisor.spawn, self._settings.toolbox
            async with open_toolbox(connector, launches, spawn, settings) as box:
                yield box

        return opened

    async def _tool_specs(self) -> list[ToolSpec]:
        """The runtime tools' names, descriptions and input schemas, as the tool server lists
        them (a run calls its TaskTools directly), without ``idempotency_key``: a call made in
        this process never loses its answer, and a key the model made up could collide with
        another call's."""
        if not self._specs:
            listed = await self._server.list_tools()
            self._specs = [
                _in_process(ToolSpec(t.name, t.description or "", dict(t.input_schema)))
                for t in listed
                if t.name in RUNTIME_TOOLS
            ]
        return self._specs

    async def close(self) -> None:
        """Claims nothing more, cancels the runs under way and hands their wake-ups back, so
        another worker resumes them at once (their lease is unchanged)."""
        self._closed = True
        handles = await self._cancel_all()
        held = [h.wakeup_id for h in handles]
        if held:
            async with self._store.transaction() as unit:
                await unit.release_wakeups(held, self._worker)
            logger.info("runner.released", runs=len(held))

    async def abandon(self) -> None:
        """This worker was presumed dead and its runs taken over elsewhere: stops them without
        touching their wake-ups (no longer ours)."""
        self._abandoned = True
        handles = await self._cancel_all()
        self._abandoned = False
        if handles:
            logger.warning("runner.abandoned", runs=len(handles))

    async def _cancel_all(self) -> list[RunHandle]:
        if self._closed and self._loop is not None:
            self._loop.cancel()
        handles = list(self._runs.values())
        for handle in handles:
            handle.task.cancel()
        if handles:
            # Bounded: a run that swallows its cancellation must not hold up a shutdown (its
            # wake-up is handed back all the same, and the supervisor cancels it again).
            _, stuck = await asyncio.wait([h.task for h in handles], timeout=CANCEL_WAIT_S)
            if stuck:
                logger.warning("runner.cancel_timed_out", runs=len(stuck))
        self._runs.clear()
        return handles


_SENT_AGAIN = re.compile(r"\s*Safe to send again with the same\s+idempotency_key\.")


def _in_process(spec: ToolSpec) -> ToolSpec:
    """The tool as a built-in agent's run sees it: without the idempotency key a remote client
    sends with a call it may have to send again."""
    schema = dict(spec.input_schema)
    properties = dict(schema.get("properties") or {})
    if "idempotency_key" not in properties:
        return spec
    del properties["idempotency_key"]
    schema["properties"] = properties
    if "required" in schema:
        schema["required"] = [n for n in schema["required"] if n != "idempotency_key"]
    return replace(spec, description=_SENT_AGAIN.sub("", spec.description), input_schema=schema)
