"""A stored key goes only where it was set for: re-pointing an agent never hands it to the new URL."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from bot.agents import AgentKind, AgentSettings
from bot.root import Overrides, open_core, open_service
from bot.status import TaskStatus
from bot.task import Actor, Task
from tests.agents.conftest import ALICE, Runtime, runtime_settings
from tests.agents.standins import AnthropicStandIn, OpenAIStandIn, Reply, ToolUse
from tests.conftest import FakeClock

KEY = "sk-only-for-the-trusted-endpoint-5d1c"


@dataclass
class Trap:
    """An aiohttp server on 127.0.0.1 that records every request's raw headers and body, and
    refuses it (401), as an attacker's endpoint collecting keys would look to threadwork."""

    seen: list[bytes] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._record)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def _record(self, request: web.Request) -> web.Response:
        head = b"".join(name + b": " + value + b"\n" for name, value in request.raw_headers)
        self.seen.append(head + await request.read())
        return web.json_response({"error": {"message": "no"}}, status=401)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def trap() -> AsyncIterator[Trap]:
    server = Trap()
    await server.start()
    yield server
    await server.close()


def in_review(task: Task) -> ToolUse:
    return ToolUse("update_task_status", {"task": str(task.ref), "status": "in_review"})


async def assign(rt: Runtime, title: str) -> Task:
    task = await rt.core.board.create_task("C1", title, Actor.user(ALICE))
    return await rt.core.board.assign_task(task.ref, "local", ALICE)


async def test_a_re_pointed_base_url_never_receives_the_old_key(
    runtime: Runtime, openai_standin: OpenAIStandIn, trap: Trap
) -> None:
    rt = runtime
    trusted = AgentSettings(model="qwen", base_url=openai_standin.url)
    await rt.core.registry.add_agent("local", AgentKind.OPENAI, settings=trusted)
    await rt.core.registry.set_api_key("local", KEY)
    first = await assign(rt, "Before the move")
    openai_standin.script(Reply([in_review(first)]))
    await rt.settle()
    assert openai_standin.requests[0].api_key == KEY

    moved = await rt.core.registry.register_agent(
        "local", AgentKind.OPENAI, settings=AgentSettings(model="qwen", base_url=trap.url)
    )
    assert moved.key_discarded is True
    second = await assign(rt, "After the move")
    await rt.settle()

    assert trap.seen, "the run never reached the new endpoint"
    assert all(KEY.encode() not in request for request in trap.seen)
    assert all(b"authorization:" not in request.lower() for request in trap.seen)
    assert (await rt.task(second)).status != TaskStatus.IN_REVIEW


async def test_with_model_hosts_set_a_run_never_calls_an_endpoint_elsewhere(
    agents_db: str, anthropic: AnthropicStandIn, clock: FakeClock, trap: Trap
) -> None:
    settings = runtime_settings(agents_db, anthropic.url)
    async with open_core(settings) as core:  # registered before the allowlist was set
        at_trap = AgentSettings(model="qwen", base_url=trap.url)
        await core.registry.add_agent("local", AgentKind.OPENAI, settings=at_trap)
        await core.registry.set_api_key("local", KEY)
    allowlisted = settings.model_copy(update={"model_hosts": ("api.anthropic.com",)})
    overrides = Overrides(clock=clock, port=0, worker="test-runner", run_loops=False)
    async with open_service(allowlisted, overrides) as service:
        rt = Runtime(service, anthropic)
        task = await assign(rt, "Keep the key home")
        await rt.settle()
        rows = await rt.core.store.list_outbox(task.id)
    assert trap.seen == []
    warnings = [r.payload.get("text", "") for r in rows]
    assert any("THREADWORK_MODEL_HOSTS allows only api.anthropic.com" in w for w in warnings)
    assert all(KEY not in w for w in warnings)


async def test_a_re_point_while_a_run_starts_sends_nothing_anywhere(
    runtime: Runtime,
    openai_standin: OpenAIStandIn,
    trap: Trap,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = runtime
    trusted = AgentSettings(model="qwen", base_url=openai_standin.url)
    await rt.core.registry.add_agent("local", AgentKind.OPENAI, settings=trusted)
    await rt.core.registry.set_api_key("local", KEY)
    task = await assign(rt, "Raced")
    get_api_key = rt.core.registry.get_api_key

    async def re_pointed_and_keyed_meanwhile(agent: str) -> str | None:
        """The runner has read the agent at the trusted URL; an admin re-points it to the trap
        and sets a key for the trap before the runner reads the key."""
        at_trap = AgentSettings(model="qwen", base_url=trap.url)
        await rt.core.registry.register_agent("local", AgentKind.OPENAI, settings=at_trap)
        await rt.core.registry.set_api_key("local", "sk-for-the-trap-only")
        return await get_api_key(agent)

    monkeypatch.setattr(rt.core.registry, "get_api_key", re_pointed_and_keyed_meanwhile)
    await rt.settle()
    assert trap.seen == []
    assert openai_standin.requests == []
    rows = await rt.core.store.list_outbox(task.id)
    assert any(
        "was changed or removed as its run started" in r.payload.get("text", "") for r in rows
    )
