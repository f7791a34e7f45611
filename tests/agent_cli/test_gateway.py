"""The worker behind a gateway: a reverse proxy on 127.0.0.1 in front of the real service (its
MCP endpoint over HTTP, on both backends). When the proxy answers 502, 503 or 504 for the
service, with a page or JSON of its own, the link takes that for the service being away, as a
dropped connection, and sends the call again with its key: a call the service made before the
proxy lost its answer is made once, and the call succeeds. The service's own JSON-RPC error,
and a gateway's other refusals (403), stay refusals: sending them again would not help. The
same proxy, as the egress proxy the environment names, carries the link's requests."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
from tests.agent_cli.tool_calls import ToolCall, tool_call
from tests.conftest import TEST_SECRET_KEY, FakeClock, SequentialKeys

ALICE = "U_ALICE"
#: Headers the proxy does not pass on (hop-by-hop, or recomputed by aiohttp).
HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})
#: What a gateway shows for a service it cannot reach.
PAGE = "<html><body><h1>Bad gateway</h1>upstream unavailable</body></html>"
#: A name that resolves nowhere (RFC 2606): only the egress proxy knows where it is.
BEHIND_PROXY = "http://threadwork.test/mcp"
#: The environment's proxy settings, cleared so that the test's own are the only ones.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@dataclass(frozen=True)
class Fault:
    """What the gateway answers for one call of its tool, in place of the service's answer."""

    status: int
    body: str = PAGE
    content_type: str = "text/html"
    #: Whether the call reaches the service first (which makes it; its answer is dropped).
    forwarded: bool = False


class Gateway:
    """A proxy to ``upstream`` that answers the next calls of ``tool`` with ``faults``, one a
    call, and passes everything else on. It takes requests in origin form (a reverse proxy,
    at ``url``) and in absolute form (an egress proxy, at ``origin``) alike."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tool = ""
        self.faults: list[Fault] = []
        #: (status, tool) of every tool call, as the link was answered.
        self.seen: list[tuple[int, str]] = []
        #: (status, idempotency key) of every call of ``tool`` that reached the service.
        self.reached: list[tuple[int, str | None]] = []
        #: The request target of every request, as the link sent it.
        self.targets: list[str] = []
        self._http = aiohttp.ClientSession(auto_decompress=False)
        self._runner: web.AppRunner | None = None
        self.origin = ""

    @property
    def url(self) -> str:
        return f"{self.origin}/mcp"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.origin = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._http.close()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.targets.append(request.raw_path)
        body = await request.read()
        call = tool_call(body)
        if call is None or call.tool != self.tool or not self.faults:
            return await self._relay(request, body, call)
        fault = self.faults.pop(0)
        if fault.forwarded:
            async with self._send(request, body) as upstream:
                await upstream.read()  # the service answered: the call was made
                self.reached.append((upstream.status, call.key))
        self.seen.append((fault.status, call.tool))
        return web.Response(status=fault.status, text=fault.body, content_type=fault.content_type)

    async def _relay(
        self, request: web.Request, body: bytes, call: ToolCall | None
    ) -> web.StreamResponse:
        async with self._send(request, body) as upstream:
            if call is not None:
                self.seen.append((upstream.status, call.tool))
            if call is not None and call.tool == self.tool:
                self.reached.append((upstream.status, call.key))
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP:
                    response.headers[name] = value
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    @contextlib.asynccontextmanager
    async def _send(
        self, request: web.Request, body: bytes
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        data = body or None
        async with self._http.request(
            request.method, self.upstream, data=data, headers=headers
        ) as upstream:
            yield upstream


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


async def call(url: str, token: str, tool: str, arguments: dict[str, Any]) -> Any:
    link = Link(url, token)
    try:
        async with asyncio.timeout(20):
            return await link.call(tool, arguments)
    finally:
        await link.close()


def post(task: Task) -> dict[str, Any]:
    return {"task": str(task.ref), "text": "Tests pass", "epoch": task.lease_epoch}


async def agent_posts(service: Service, task: Task) -> list[str]:
    rows = await service.core.store.list_outbox(task.id)
    return [str(r.payload["text"]) for r in rows if r.kind == OutboxKind.AGENT_POST]


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_gateways_page_saying_the_service_is_away_is_sent_again_and_posts_once(
    service: Service, gateway: Gateway, status: int
) -> None:
    token, task = await assigned(service)
    gateway.tool, gateway.faults = "post_update", [Fault(status), Fault(status)]

    result = await call(gateway.url, token, "post_update", post(task))

    assert isinstance(result, Done), result
    assert [s for s, tool in gateway.seen if tool == "post_update"] == [status, status, 200]
    assert await agent_posts(service, task) == ["Tests pass"]


async def test_a_call_the_service_made_before_the_gateway_lost_its_answer_is_made_once(
    service: Service, gateway: Gateway
) -> None:
    token, task = await assigned(service)
    gateway.tool, gateway.faults = "post_update", [Fault(504, forwarded=True)]

    result = await call(gateway.url, token, "post_update", post(task))

    assert isinstance(result, Done), result
    assert gateway.seen == [(504, "post_update"), (200, "post_update")]
    assert await agent_posts(service, task) == ["Tests pass"]  # made once
    [(first, key), (again, key_again)] = gateway.reached  # though the service had it twice
    assert (first, again) == (200, 200)
    assert key is not None
    assert key == key_again


async def test_a_gateways_own_json_saying_the_service_is_away_is_sent_again(
    service: Service, gateway: Gateway
) -> None:
    token, task = await assigned(service)
    away = Fault(503, '{"message": "no healthy upstream"}', "application/json")
    gateway.tool, gateway.faults = "post_update", [away]

    result = await call(gateway.url, token, "post_update", post(task))

    assert isinstance(result, Done), result
    assert gateway.seen == [(503, "post_update"), (200, "post_update")]
    assert await agent_posts(service, task) == ["Tests pass"]


async def test_a_json_rpc_error_at_a_gateway_status_is_the_services_refusal(
    service: Service, gateway: Gateway
) -> None:
    token, task = await assigned(service)
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": "overloaded"}}
    gateway.tool, gateway.faults = (
        "post_update",
        [Fault(503, json.dumps(error), "application/json")],
    )

    result = await call(gateway.url, token, "post_update", post(task))

    assert isinstance(result, Refused), result
    assert result.message == "post_update: overloaded"  # the SDK read the body the hook read
    assert gateway.seen == [(503, "post_update")]
    assert await agent_posts(service, task) == []


async def test_a_gateways_other_refusal_stays_a_refusal_and_is_not_sent_again(
    service: Service, gateway: Gateway
) -> None:
    token, task = await assigned(service)
    gateway.tool, gateway.faults = "post_update", [Fault(403)]

    result = await call(gateway.url, token, "post_update", post(task))

    assert isinstance(result, Refused), result
    assert gateway.seen == [(403, "post_update")]
    assert await agent_posts(service, task) == []


async def test_the_link_reaches_the_service_through_the_environments_proxy(
    service: Service, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway stands in for an egress proxy: ``HTTP_PROXY`` names it, and the link is
    pointed at ``threadwork.test``, a name that resolves nowhere, so a link that ignored the
    proxy could not connect at all (it would retry until the test's timeout). The service's
    own address, 127.0.0.1, is not used as the link's URL: whether a loopback address bypasses
    a proxy is up to ``NO_PROXY``, which the test clears with every other proxy setting."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", gateway.origin)
    token, task = await assigned(service)

    result = await call(BEHIND_PROXY, token, "post_update", post(task))

    assert isinstance(result, Done), result
    assert gateway.seen == [(200, "post_update")]
    assert set(gateway.targets) == {BEHIND_PROXY}  # absolute form: sent to it as a proxy
    assert await agent_posts(service, task) == ["Tests pass"]
