"""Two replicas of the service on one PostgreSQL database: a commit on one wakes the other.

Replica B polls only every 30 s, and every wait below is bounded well under that, so when B
wakes it is PostgreSQL's NOTIFY, heard by B's listener, that woke it. Replica A runs no loops,
so it is B's runner that takes A's wake-ups.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy import text

from bot.agents import AgentKind, AgentSettings
from bot.delivery import DeliverySettings
from bot.root import Overrides, Service, open_service
from bot.settings import Settings
from bot.signal import ChangeSignal
from bot.task import Actor, Task
from store.notify import ChangeListener
from tests.agents.conftest import ALICE, FALLBACK_KEY
from tests.agents.standins import AnthropicStandIn, Hang
from tests.agents.test_mcp import payload
from tests.conftest import TEST_SECRET_KEY, FakeClock

pytestmark = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

#: Replica B's poll: far longer than any wait in these tests.
B_POLL_S = 30.0
#: The bound on every wait for a wake-up.
WAKE_WITHIN_S = 10.0


@dataclass
class Replicas:
    a: Service
    b: Service

    @property
    def b_listener(self) -> ChangeListener:
        assert self.b.listener is not None
        return self.b.listener

    async def assigned(self, agent: str, title: str = "Rotate the API keys") -> Task:
        """A task created and assigned through replica A (each step its own commit)."""
        task = await self.a.core.board.create_task("C1", title, Actor.user(ALICE))
        return await self.a.core.board.assign_task(task.ref, agent, ALICE)


def replica_settings(database_url: str, anthropic_url: str) -> Settings:
    return Settings(
        DATABASE_URL=database_url,
        THREADWORK_SECRET_KEY=TEST_SECRET_KEY,
        ANTHROPIC_API_KEY=FALLBACK_KEY,
        ANTHROPIC_BASE_URL=anthropic_url,
    )


@pytest.fixture
async def replicas(
    database_url: str, anthropic: AnthropicStandIn, clock: FakeClock
) -> AsyncIterator[Replicas]:
    settings = replica_settings(database_url, anthropic.url)
    a = Overrides(clock=clock, port=0, worker="replica-a", run_loops=False)
    b = Overrides(
        clock=clock,
        port=0,
        worker="replica-b",
        run_loops=False,
        poll_s=B_POLL_S,
        delivery=DeliverySettings(idle_poll=B_POLL_S),
    )
    async with open_service(settings, a) as first, open_service(settings, b) as second:
        yield Replicas(first, second)


class Parked:
    """Notes each time someone starts waiting on ``signal`` (an agent's ``wait_for_work`` once
    it found nothing), so a test commits only once the waiter can be woken by nothing else."""

    def __init__(self, signal: ChangeSignal, monkeypatch: pytest.MonkeyPatch) -> None:
        self.waiting = asyncio.Event()
        changed = signal.changed

        async def parked() -> None:
            self.waiting.set()
            await changed()

        monkeypatch.setattr(signal, "changed", parked)


class Passes:
    """Counts the runner's claim passes and notes when one found nothing (the runner is then
    idle until woken, or until its poll)."""

    def __init__(self, service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
        self.idle = asyncio.Event()
        run_once = service.runner.run_once

        async def counted() -> int:
            found = await run_once()
            if found == 0:
                self.idle.set()
            return found

        monkeypatch.setattr(service.runner, "run_once", counted)


@asynccontextmanager
async def mcp_client(url: str, token: str) -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP, as an external agent connects."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def wait_for_work_on_b(replicas: Replicas, monkeypatch: pytest.MonkeyPatch) -> None:
    """An external agent waits for work on replica B while its directive is committed on A;
    returns once the wait answered with it."""
    registry = replicas.a.core.registry
    await registry.add_agent("cursor-bot")
    token = await registry.issue_token("cursor-bot")
    assert replicas.b.mcp_url is not None
    parked = Parked(replicas.b.core.signal, monkeypatch)
    async with mcp_client(replicas.b.mcp_url, token) as client:
        waiting = asyncio.create_task(client.call_tool("wait_for_work", {"timeout_s": 25}))
        async with asyncio.timeout(WAKE_WITHIN_S):
            await parked.waiting.wait()
        task = await replicas.assigned("cursor-bot")
        async with asyncio.timeout(WAKE_WITHIN_S):
            work = payload(await waiting)["work"]
    assert work == [{"task": str(task.ref), "reason": "directive", "epoch": task.lease_epoch}]


async def test_a_directive_committed_on_one_replica_wakes_wait_for_work_on_another(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    await wait_for_work_on_b(replicas, monkeypatch)


async def test_a_directive_committed_on_one_replica_starts_the_run_on_anothers_runner(
    replicas: Replicas, anthropic: AnthropicStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    await replicas.a.core.registry.add_agent(
        "claude-1", AgentKind.CLAUDE, settings=AgentSettings(model="claude-standin-1")
    )
    anthropic.script(Hang())
    passes = Passes(replicas.b, monkeypatch)
    replicas.b.supervisor.spawn(replicas.b.runner.run(), name="agent-runner")
    async with asyncio.timeout(WAKE_WITHIN_S):
        await passes.idle.wait()

    task = await replicas.assigned("claude-1")
    async with asyncio.timeout(WAKE_WITHIN_S):
        await anthropic.until_hung(1)  # B's run asked the model for its first step

    assert list(replicas.b.runner.active) == [task.id]
    assert replicas.a.runner.active == {}


async def test_after_its_connection_is_killed_the_listener_reconnects_and_wakes_the_replica(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = replicas.b_listener
    first = await listener.listening()
    async with replicas.a.core.engine.connect() as connection:
        await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    async with asyncio.timeout(WAKE_WITHIN_S):
        while listener.backend_pid in (None, first):
            await replicas.b.core.signal.changed()  # the reconnect tells B about everything

    await wait_for_work_on_b(replicas, monkeypatch)
