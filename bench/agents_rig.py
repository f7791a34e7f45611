"""The service as ``serve`` wires it (``bot.root.open_service``), without Slack: a fresh SQLite
file, the real clock, the built-in runtime and the reconcile scheduler.

The model is whatever stand-in listens at ``anthropic_url``; the MCP front door stays off. SQL
statements are counted on the engine (``SqlCounter``) so a result can say what a step costs.
"""

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.agents import AgentKind, AgentSettings
from bot.logging import configure_logging
from bot.root import Core, Overrides, Service, open_service
from bot.runtime.models import ModelBook
from bot.runtime.runner import AgentRunner
from bot.settings import Settings
from bot.signal import ChangeSignal
from bot.supervisor import Supervisor
from bot.task import Actor, Task
from store.schema import tasks

AGENT = "claude-bench"
MODEL = "claude-standin-1"
PERSON = "UBENCH01"
#: The SqlCounter key for the runner's claim query (one per claim pass).
CLAIM_QUERIES = "claim queries"
CHANNEL = "C1"


class SqlCounter:
    """Counts the statements an engine sends, by kind: write/read transactions, SELECT, ..."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def attach(self, engine: AsyncEngine) -> "SqlCounter":
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)
        return self

    def snapshot(self) -> Counter[str]:
        return Counter(self.counts)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        words = statement.lstrip().split(None, 2)
        kind = " ".join(words[:2]) if words[:2] == ["BEGIN", "IMMEDIATE"] else words[0].upper()
        self.counts[kind] += 1
        if kind == "SELECT" and "agent_wakeups.claimed_by IS NULL" in statement:
            self.counts[CLAIM_QUERIES] += 1  # the runner's claim query


class RunWatcher:
    """Notes every run the runner has going each time something commits (cheap: no I/O).

    A run always commits while it is active (its final status change), so by the end every run
    has been seen, and awaiting them gives the moment the last one finished.
    """

    def __init__(self, runner: AgentRunner) -> None:
        self._runner = runner
        self.runs: dict[int, asyncio.Task[Any]] = {}
        self.peak = 0

    def observe(self) -> None:
        active = self._runner.active
        self.peak = max(self.peak, len(active))
        self.runs.update((task_id, handle.task) for task_id, handle in active.items())

    async def until_finished(self, task_ids: set[int], signal: ChangeSignal) -> list[str]:
        """Waits (bound it) until a run of each task was seen and every seen run has ended."""
        while not task_ids <= self.runs.keys():
            await signal.changed()
        return [str(outcome) for outcome in await asyncio.gather(*self.runs.values())]


@dataclass
class Rig:
    """The service as the root built it, with the engine's SQL counted and its runs watched."""

    service: Service
    sql: SqlCounter
    watcher: RunWatcher

    @property
    def core(self) -> Core:
        return self.service.core

    @property
    def supervisor(self) -> Supervisor:
        return self.service.supervisor

    @property
    def runner(self) -> AgentRunner:
        return self.service.runner

    @property
    def models(self) -> ModelBook:
        return self.service.models

    def start_runner(self) -> None:
        """Starts ``runner.run()`` in the background, as ``serve`` does (``runner.close`` at
        the service's exit cancels it before the supervisor drains)."""
        self.supervisor.spawn(self.runner.run(), name="agent-runner")

    async def until_finished(self, task_ids: set[int]) -> list[str]:
        """The outcomes of every run seen, once each of ``task_ids`` has had one end (bound it)."""
        return await self.watcher.until_finished(task_ids, self.core.signal)

    async def assigned(self, title: str) -> Task:
        """A new task in the channel, assigned to the benchmark's agent (committed)."""
        task = await self.core.board.create_task(CHANNEL, title, Actor.user(PERSON))
        return await self.core.board.assign_task(task.ref, AGENT, PERSON)

    async def count_in_status(self, status: str) -> int:
        async with self.core.engine.connect() as connection:
            query = select(func.count()).select_from(tasks).where(tasks.c.status == status)
            return int((await connection.execute(query)).scalar_one())


def rig_settings(database: Path, anthropic_url: str, max_steps: int) -> Settings:
    return Settings(
        DATABASE_URL=f"sqlite:///{database}",
        ANTHROPIC_API_KEY="sk-ant-bench-000",
        ANTHROPIC_BASE_URL=anthropic_url,
        SLACK_BOT_TOKEN=None,
        THREADWORK_MCP_PORT=0,
        THREADWORK_AGENT_MAX_STEPS=max_steps,
    )


@contextlib.asynccontextmanager
async def open_rig(
    database: Path, anthropic_url: str, max_steps: int, wake_on_commit: bool = True
) -> AsyncIterator[Rig]:
    """Opens the service on ``database`` (migrated) with one Claude agent; runner stopped.

    With ``wake_on_commit`` off, no commit wakes the runner (``runner_wakes_on_commit``) and it
    claims on its 1 s poll: for work that is all queued before the runner starts, that is what
    waking it only for commits that enqueue a wake-up would cost.
    """
    settings = rig_settings(database, anthropic_url, max_steps)
    overrides = Overrides(
        port=0, worker="bench-runner", run_loops=False, runner_wakes_on_commit=wake_on_commit
    )
    async with open_service(settings, overrides) as service:
        core = service.core
        agent_settings = AgentSettings(model=MODEL, max_tokens=1024)
        await core.registry.add_agent(AGENT, AgentKind.CLAUDE, settings=agent_settings)
        watcher = RunWatcher(service.runner)
        core.signal.subscribe(watcher.observe)
        yield Rig(service, SqlCounter().attach(core.engine), watcher)


def log_to(stream: TextIO) -> None:
    """INFO logs as ``threadwork serve`` writes them, into ``stream`` instead of stderr."""
    with contextlib.redirect_stderr(stream):
        configure_logging("INFO")
