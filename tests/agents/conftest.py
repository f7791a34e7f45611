"""A core with the built-in runtime, its models pointed at local stand-ins of the providers."""

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.agents import AgentKind, AgentSettings, Autonomy
from bot.root import Core, Overrides, Service, open_service
from bot.runtime.runner import AgentRunner
from bot.settings import Settings
from bot.supervisor import Supervisor
from bot.task import Actor, Task
from tests.agents.standins import AnthropicStandIn, OpenAIStandIn
from tests.conftest import TEST_SECRET_KEY, FakeClock

ALICE = "UALICE01"
FALLBACK_KEY = "sk-ant-fallback-000"


@dataclass
class Runtime:
    service: Service
    anthropic: AnthropicStandIn

    @property
    def core(self) -> Core:
        return self.service.core

    @property
    def supervisor(self) -> Supervisor:
        return self.service.supervisor

    @property
    def runner(self) -> AgentRunner:
        return self.service.runner

    async def assigned(self, agent: str = "claude-1", title: str = "Add a health check") -> Task:
        task = await self.core.board.create_task("C1", title, Actor.user(ALICE))
        return await self.core.board.assign_task(task.ref, agent, ALICE)

    async def settle(self) -> int:
        """Starts runs for due wake-ups and waits until every run has finished."""
        started = await self.runner.run_once()
        await self.supervisor.drain()
        return started

    async def task(self, task: Task) -> Task:
        async with self.core.store.read() as reader:
            current = await reader.get_task(task.ref)
        assert current is not None
        return current


def runtime_settings(database_url: str, anthropic_url: str, max_steps: int = 20) -> Settings:
    return Settings(
        DATABASE_URL=database_url,
        THREADWORK_SECRET_KEY=TEST_SECRET_KEY,
        ANTHROPIC_API_KEY=FALLBACK_KEY,
        ANTHROPIC_BASE_URL=anthropic_url,
        THREADWORK_MCP_PORT=0,
        THREADWORK_AGENT_MAX_STEPS=max_steps,
    )


@pytest.fixture
def agents_db(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "agents.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
async def anthropic() -> AsyncIterator[AnthropicStandIn]:
    standin = AnthropicStandIn()
    await standin.start()
    yield standin
    await standin.close()


@pytest.fixture
async def openai_standin() -> AsyncIterator[OpenAIStandIn]:
    standin = OpenAIStandIn()
    await standin.start()
    yield standin
    await standin.close()


async def open_runtime(
    database_url: str, anthropic: AnthropicStandIn, clock: FakeClock, max_steps: int = 20
) -> AsyncIterator[Runtime]:
    settings = runtime_settings(database_url, anthropic.url, max_steps)
    overrides = Overrides(clock=clock, port=0, worker="test-runner", run_loops=False)
    async with open_service(settings, overrides) as service:
        yield Runtime(service, anthropic)


@pytest.fixture
async def runtime(
    agents_db: str, anthropic: AnthropicStandIn, clock: FakeClock
) -> AsyncIterator[Runtime]:
    async for rt in open_runtime(agents_db, anthropic, clock):
        await rt.core.registry.add_agent(
            "claude-1",
            AgentKind.CLAUDE,
            settings=AgentSettings(model="claude-standin-1", max_tokens=1024),
        )
        await rt.core.registry.add_agent(
            "claude-waits",
            AgentKind.CLAUDE,
            settings=AgentSettings(model="claude-standin-1", autonomy=Autonomy.WAIT),
        )
        yield rt
