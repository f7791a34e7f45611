"""The worker behind a gateway: a reverse proxy on 127.0.0.1 in front of the real service (its
MCP endpoint over HTTP, on both backends). While the service is away the proxy answers 502 or
503 with a page of its own; the link takes that for the service being away, as a dropped
connection, and sends the call again with its key, so the post is made once and the call
succeeds. A gateway's other refusals (403) stay refusals: sending them again would not help."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.outbox import OutboxKind
from bot.root import Overrides, Service, open_service
from bot.settings import Settings
from bot.task import Actor, Task
from bot.tools import Done, Refused
from channels.agent_cli.link import Link
from tests.conftest import TEST_SECRET_KEY, FakeClock, SequentialKeys

ALICE = "U_ALICE"
#: Headers the proxy does not pass on (hop-by-hop, or recomputed by aiohttp).
HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})


class Gateway:
    """A reverse proxy to ``upstream`` that answers the next ``failures`` calls of ``tool``
    itself, with ``status`` and an HTML page, without passing them on."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tool = ""
        self.status = 502
        self.failures = 0
        #: (status, tool) of every tool call the proxy saw.
        self.seen: list[tuple[int, str]] = []
        self._http = aiohttp.ClientSession(auto_decompress=False)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/mcp"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._http.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        tool = _tool(body)
        if tool is not None and tool == self.tool and self.failures > 0:
            self.failures -= 1
            self.seen.append((self.status, tool))
            page = f"<html><body><h1>{self.status}</h1>upstream unavailable</body></html>"
            return web.Response(status=self.status, text=page, content_type="text/html")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with self._http.request(
            request.method, self.upstream, data=body or None, headers=headers
        ) as upstream:
            if tool is not None:
                self.seen.append((upstream.status, tool))
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP:
                    response.headers[name] = value
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


def _tool(body: bytes) -> str | None:
    try:
        message = json.loads(body) if body else None
    except ValueError:
        return None
    if isinstance(message, dict) and message.get("method") == "tools/call":
        return str((message.get("params") or {}).get("name"))
    return None


@pytest.fixture
async def service(
    database_url: str, clock: FakeClock, keys: SequentialKeys
) -> AsyncIterator[Service]:
    settings = Settings(DATABASE_URL=database_url, THREADWORK_SECRET_KEY=TEST_SECRET_KEY)
    overrides = Overrides(clock=clock, new_key=keys, port=0, worker="gateway-test", run_loops=False)
    async with open_service(settings, overrides) as running:
        yield running


@pytest.fixture
async def gateway(service: Service) -> AsyncIterator[Gateway]:
    assert service.mcp_url is not None
    proxy = Gateway(service.mcp_url)
    await proxy.start()
    yield proxy
    await proxy.close()


async def assigned(service: Service) -> tuple[str, Task]:
    core = service.core
    await core.registry.add_agent("coder")
    token = await core.registry.issue_token("coder")
    created = await core.board.create_task("C1", "Fix the flaky test", Actor.user(ALICE))
    return token, await core.board.assign_task(created.ref, "coder", ALICE)


async def call(gateway: Gateway, token: str, tool: str, arguments: dict[str, Any]) -> Any:
    link = Link(gateway.url, token)
    try:
        async with asyncio.timeout(30):
            return await link.call(tool, arguments)
    finally:
        await link.close()


async def agent_posts(service: Service, task: Task) -> list[str]:
    rows = await service.core.store.list_outbox(task.id)
    return [str(r.payload["text"]) for r in rows if r.kind == OutboxKind.AGENT_POST]


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_gateways_answer_that_the_service_is_away_is_sent_again_and_posts_once(
    service: Service, gateway: Gateway, status: int
) -> None:
    token, task = await assigned(service)
    gateway.tool, gateway.status, gateway.failures = "post_update", status, 2
    arguments = {"task": str(task.ref), "text": "Tests pass", "epoch": task.lease_epoch}

    result = await call(gateway, token, "post_update", arguments)

    assert isinstance(result, Done), result
    assert [s for s, tool in gateway.seen if tool == "post_update"] == [status, status, 200]
    assert await agent_posts(service, task) == ["Tests pass"]


async def test_a_gateways_other_refusal_stays_a_refusal_and_is_not_sent_again(
    service: Service, gateway: Gateway
) -> None:
    token, task = await assigned(service)
    gateway.tool, gateway.status, gateway.failures = "post_update", 403, 1
    arguments = {"task": str(task.ref), "text": "Tests pass", "epoch": task.lease_epoch}

    result = await call(gateway, token, "post_update", arguments)

    assert isinstance(result, Refused), result
    assert gateway.seen == [(403, "post_update")]
    assert await agent_posts(service, task) == []
