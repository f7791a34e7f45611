"""External agents over MCP: the SDK's own client, streamable HTTP, bearer tokens."""

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from bot.board import Board
from bot.registry import AgentRegistry
from bot.root import Overrides, Service, open_service
from bot.settings import Settings
from bot.status import TaskStatus
from bot.task import Actor, TaskRef
from store.repository import SqlStore
from tests.conftest import TEST_SECRET_KEY, FakeClock, SequentialKeys

ALICE = "UALICE01"
#: Where the world's agents reach threadwork from outside (THREADWORK_PUBLIC_URL).
PUBLIC_URL = "https://threadwork.example.com"


@dataclass
class McpWorld:
    service: Service
    url: str
    tokens: dict[str, str]
    stack: AsyncExitStack

    @property
    def board(self) -> Board:
        return self.service.core.board

    @property
    def registry(self) -> AgentRegistry:
        return self.service.core.registry

    @property
    def store(self) -> SqlStore:
        return self.service.core.store

    async def close(self) -> None:
        """Shuts the service down as SIGTERM would."""
        await self.stack.aclose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(params=["main-port", "own-port"])
async def world(
    request: pytest.FixtureRequest, database_url: str, clock: FakeClock, keys: SequentialKeys
) -> AsyncIterator[McpWorld]:
    """The service as ``serve`` builds it, its MCP endpoint at /mcp on the main port, or on a
    port of its own when THREADWORK_MCP_PORT is set."""
    own = {"THREADWORK_MCP_PORT": free_port()} if request.param == "own-port" else {}
    settings = Settings(
        DATABASE_URL=database_url,
        THREADWORK_SECRET_KEY=TEST_SECRET_KEY,
        THREADWORK_PUBLIC_URL=PUBLIC_URL,
        **own,
    )
    overrides = Overrides(clock=clock, new_key=keys, port=0, worker="mcp-test", run_loops=False)
    async with AsyncExitStack() as stack:
        service = await stack.enter_async_context(open_service(settings, overrides))
        tokens = {}
        for name in ("cursor-bot", "codex-bot"):
            await service.core.registry.add_agent(name)
            tokens[name] = await service.core.registry.issue_token(name)
        assert service.mcp_url is not None
        yield McpWorld(service, service.mcp_url, tokens, stack)


@asynccontextmanager
async def connect(world: McpWorld, token: str | None) -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP; the HTTP client it is given is ours to close."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(world.url, http_client=http)) as client,
    ):
        yield client


def payload(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def refusal(result: Any, tool: str) -> str:
    """An error result's text after the SDK's own ``Error executing tool <name>: `` prefix."""
    assert result.is_error
    text: str = result.content[0].text
    prefix = f"Error executing tool {tool}: "
    assert text.startswith(prefix), text
    return text.removeprefix(prefix)


async def assigned(world: McpWorld, agent: str = "cursor-bot") -> TaskRef:
    task = await world.board.create_task("C1", "Migrate the billing cron", Actor.user(ALICE))
    await world.board.assign_task(task.ref, agent, ALICE)
    return task.ref


async def test_an_agent_lists_the_tools_and_drives_its_task_to_review(world: McpWorld) -> None:
    ref = await assigned(world)
    async with connect(world, world.tokens["cursor-bot"]) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {
            "list_my_tasks",
            "get_task",
            "post_update",
            "update_task_status",
            "add_artifact",
            "report_liveness",
            "release_task",
            "wait_for_work",
        }
        mine = payload(await client.call_tool("list_my_tasks", {}))["tasks"]
        assert [t["ref"] for t in mine] == [str(ref)]
        epoch = mine[0]["epoch"]
        task = payload(await client.call_tool("get_task", {"task": str(ref)}))
        assert (task["status"], task["epoch"]) == ("todo", epoch)
        await client.call_tool(
            "update_task_status", {"task": str(ref), "status": "in_progress", "epoch": epoch}
        )
        payload(
            await client.call_tool(
                "post_update", {"task": str(ref), "text": "Ported 3 of 5 jobs", "epoch": epoch}
            )
        )
        payload(
            await client.call_tool(
                "add_artifact",
                {
                    "task": str(ref),
                    "name": "PR",
                    "kind": "pull_request",
                    "uri": "https://git.example/pr/9",
                    "epoch": epoch,
                },
            )
        )
        done = payload(
            await client.call_tool(
                "update_task_status",
                {"task": str(ref), "status": "in_review", "note": "PR up", "epoch": epoch},
            )
        )
        assert done["status"] == "in_review"
    async with world.store.read() as reader:
        final = await reader.get_task(ref)
        assert final is not None
        assert final.status == TaskStatus.IN_REVIEW
        [artifact] = await reader.list_artifacts(final.id)
    assert artifact.uri == "https://git.example/pr/9"


async def test_done_and_cancel_are_for_people_and_blocked_needs_a_reason(world: McpWorld) -> None:
    ref = await assigned(world)
    async with connect(world, world.tokens["cursor-bot"]) as client:
        for status, note, says in [
            ("done", None, "not_allowed: Only a person can mark a task done"),
            ("canceled", None, "not_allowed: Agents cannot cancel"),
            ("blocked", None, "invalid: Say why the task is blocked"),
        ]:
            args = {"task": str(ref), "status": status, "epoch": 1} | (
                {"note": note} if note else {}
            )
            result = await client.call_tool("update_task_status", args)
            assert refusal(result, "update_task_status").startswith(says)
    async with world.store.read() as reader:
        task = await reader.get_task(ref)
    assert task is not None
    assert task.status == TaskStatus.TODO


async def test_another_agents_task_a_superseded_epoch_and_a_missing_task_are_refused_by_reason(
    world: McpWorld,
) -> None:
    theirs = await assigned(world, "codex-bot")
    mine = await assigned(world, "cursor-bot")
    async with connect(world, world.tokens["cursor-bot"]) as client:
        refused = await client.call_tool(
            "post_update", {"task": str(theirs), "text": "let me help", "epoch": 1}
        )
        assert refusal(refused, "post_update") == (
            f"not_claimed: {theirs} is not claimed by `cursor-bot`; only its assignee can change it."
        )
        old_epoch = payload(await client.call_tool("get_task", {"task": str(mine)}))["epoch"]
        await world.board.assign_task(mine, "cursor-bot", ALICE)
        late = await client.call_tool(
            "update_task_status", {"task": str(mine), "status": "in_progress", "epoch": old_epoch}
        )
        now = payload(await client.call_tool("get_task", {"task": str(mine)}))["epoch"]
        assert refusal(late, "update_task_status").startswith(
            f"superseded: epoch {old_epoch} of C1#2 was replaced by epoch {now}; "
        )
        missing = await client.call_tool("get_task", {"task": "C1#99"})
        assert refusal(missing, "get_task") == "not_found: There is no task C1#99."


@pytest.mark.parametrize("token", [None, "twk_not-a-real-token"], ids=["no-token", "unknown-token"])
async def test_a_request_without_a_live_token_is_refused(
    world: McpWorld, token: str | None
) -> None:
    async with httpx2.AsyncClient() as http:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await http.post(
            world.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers
        )
    assert response.status_code == 401


async def test_a_revoked_token_stops_working(world: McpWorld) -> None:
    token = world.tokens["cursor-bot"]
    async with connect(world, token) as client:
        payload(await client.call_tool("list_my_tasks", {}))
    assert await world.registry.revoke_tokens("cursor-bot") == 1
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            world.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 401


async def test_wait_for_work_returns_as_soon_as_a_directive_arrives(world: McpWorld) -> None:
    async with connect(world, world.tokens["cursor-bot"]) as client:
        assert payload(await client.call_tool("wait_for_work", {"timeout_s": 0}))["work"] == []
        waiting = asyncio.create_task(client.call_tool("wait_for_work", {"timeout_s": 20}))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        ref = await assigned(world)
        async with asyncio.timeout(5):
            result = payload(await waiting)
    assert result["work"] == [{"task": str(ref), "reason": "directive", "epoch": 1}]


async def test_the_stdio_bridge_gives_a_local_client_the_same_tools_as_its_agent(
    world: McpWorld, tmp_path: Path
) -> None:
    ref = await assigned(world)
    bridge = StdioServerParameters(
        command=str(Path(sys.executable).parent / "threadwork"),
        args=["mcp", "--url", world.url],
        env={
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "THREADWORK_MCP_TOKEN": world.tokens["cursor-bot"],
        },
    )
    async with asyncio.timeout(60), Client(bridge) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "update_task_status" in names
        mine = payload(await client.call_tool("list_my_tasks", {}))["tasks"]
        assert [t["ref"] for t in mine] == [str(ref)]
        epoch = mine[0]["epoch"]
        moved = payload(
            await client.call_tool(
                "update_task_status", {"task": str(ref), "status": "in_progress", "epoch": epoch}
            )
        )
        assert moved["status"] == "in_progress"


async def test_the_endpoint_is_where_the_setting_says_and_only_there(world: McpWorld) -> None:
    main = world.service.url + "/mcp"
    assert world.url == main if world.service.core.settings.mcp_port is None else world.url != main
    async with httpx2.AsyncClient() as http:
        health = await http.get(world.service.url + "/healthz")
        elsewhere = await http.post(
            main,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": f"Bearer {world.tokens['cursor-bot']}"},
        )
    assert health.status_code == 200
    if world.url != main:
        assert elsewhere.status_code == 404


async def test_a_wait_for_work_in_flight_answers_nothing_came_at_shutdown(world: McpWorld) -> None:
    async with connect(world, world.tokens["cursor-bot"]) as client:
        await client.list_tools()  # the client checks results against these, without a request
        waiting = asyncio.create_task(client.call_tool("wait_for_work", {"timeout_s": 300}))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        async with asyncio.timeout(10):
            await world.close()
            assert payload(await waiting) == {"work": []}


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "host-check", "version": "1"},
    },
}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "evil.example"}, 421),
        ({"Host": "threadwork.example.com.evil.example"}, 421),
        ({"Host": "threadwork.example.com:8443"}, 421),
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "http://threadwork.example.com"}, 403),
        ({"Host": "threadwork.example.com", "Origin": "https://evil.example"}, 403),
        ({"Host": "threadwork.example.com", "Origin": PUBLIC_URL}, 200),
        ({"Host": "threadwork.example.com:443", "Origin": PUBLIC_URL + ":443"}, 200),
        ({}, 200),
    ],
    ids=[
        "foreign-host",
        "lookalike-host",
        "public-host-other-port",
        "foreign-origin",
        "public-host-other-scheme",
        "public-host-foreign-origin",
        "public-host-and-origin",
        "public-with-default-port",
        "the-bound-address",
    ],
)
async def test_the_endpoint_answers_only_the_configured_host_and_origin(
    world: McpWorld, headers: dict[str, str], status: int
) -> None:
    token = world.tokens["cursor-bot"]
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            world.url,
            json=INITIALIZE,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json, text/event-stream",
            }
            | headers,
        )
    assert response.status_code == status, response.text


async def test_a_foreign_host_is_refused_even_when_the_service_binds_every_address(
    database_url: str, clock: FakeClock, keys: SequentialKeys
) -> None:
    settings = Settings(
        DATABASE_URL=database_url,
        HOST="0.0.0.0",  # noqa: S104  # the case under test: bound to every address
        THREADWORK_SECRET_KEY=TEST_SECRET_KEY,
        THREADWORK_PUBLIC_URL=PUBLIC_URL,
    )
    overrides = Overrides(clock=clock, new_key=keys, port=0, worker="mcp-test", run_loops=False)
    async with open_service(settings, overrides) as service:
        await service.core.registry.add_agent("cursor-bot")
        token = await service.core.registry.issue_token("cursor-bot")
        assert service.mcp_url is not None
        url = service.mcp_url.replace("0.0.0.0", "127.0.0.1")  # noqa: S104  # its own address
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
        }
        async with httpx2.AsyncClient(headers=headers) as http:
            foreign = await http.post(url, json=INITIALIZE, headers={"Host": "evil.example"})
            public = await http.post(
                url, json=INITIALIZE, headers={"Host": "threadwork.example.com"}
            )
    assert (foreign.status_code, public.status_code) == (421, 200)


async def test_writes_without_an_epoch_or_with_a_stale_one_are_refused_over_mcp(
    world: McpWorld,
) -> None:
    ref = await assigned(world)
    async with connect(world, world.tokens["cursor-bot"]) as client:
        epoch = payload(await client.call_tool("get_task", {"task": str(ref)}))["epoch"]
        for name, arguments in [
            ("post_update", {"task": str(ref), "text": "no epoch"}),
            ("update_task_status", {"task": str(ref), "status": "in_progress"}),
            ("add_artifact", {"task": str(ref), "name": "n", "kind": "log", "content": "c"}),
        ]:
            missing = refusal(await client.call_tool(name, arguments), name)
            assert missing.startswith("invalid: Pass `epoch`"), missing
            stale = refusal(await client.call_tool(name, arguments | {"epoch": epoch - 1}), name)
            assert stale.startswith("superseded:"), stale
    async with world.store.read() as reader:
        task = await reader.get_task(ref)
        assert task is not None
        assert (task.status, await reader.list_artifacts(task.id)) == (TaskStatus.TODO, [])
    assert [r for r in await world.store.list_outbox(task.id) if r.kind.value == "agent_post"] == []


async def test_a_token_over_its_calls_per_minute_is_refused_with_when_to_retry(
    database_url: str, clock: FakeClock, keys: SequentialKeys
) -> None:
    settings = Settings(
        DATABASE_URL=database_url,
        THREADWORK_SECRET_KEY=TEST_SECRET_KEY,
        THREADWORK_AGENT_CALLS_PER_MINUTE=3,
    )
    overrides = Overrides(clock=clock, new_key=keys, port=0, worker="mcp-test", run_loops=False)
    async with AsyncExitStack() as stack:
        service = await stack.enter_async_context(open_service(settings, overrides))
        await service.core.registry.add_agent("cursor-bot")
        token = await service.core.registry.issue_token("cursor-bot")
        other = await service.core.registry.issue_token("cursor-bot")
        assert service.mcp_url is not None
        world = McpWorld(service, service.mcp_url, {}, stack)
        async with connect(world, token) as client:
            for _ in range(3):
                payload(await client.call_tool("list_my_tasks", {}))
            over = refusal(await client.call_tool("list_my_tasks", {}), "list_my_tasks")
        assert over.startswith("rate_limited: this token made too many tool calls"), over
        seconds = int(over.rsplit("retry in ", 1)[1].split(" ")[0])
        assert 1 <= seconds <= 60
        async with connect(world, other) as client:  # the budget is per token
            payload(await client.call_tool("list_my_tasks", {}))
