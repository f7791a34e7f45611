"""The ASGI mount, proved on a real aiohttp server: the SDK's MCP client, and a bare ASGI app."""

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx2
import pytest
from aiohttp import web
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from multidict import CIMultiDict
from starlette.types import Receive, Scope, Send
from structlog.testing import capture_logs
from yarl import URL

from channels.mcp.asgi import AsgiMount, LifespanError

WAIT = 5.0  # bound on every wait
BIG = bytes(range(256)) * (3 * 4096)  # 3 MiB


@asynccontextmanager
async def serving(mount: AsgiMount, handler_cancellation: bool = False) -> AsyncIterator[str]:
    """The mount on a real aiohttp server on 127.0.0.1; yields its base URL."""
    app = web.Application()
    app.add_routes(mount.routes())
    await mount.start()
    runner = web.AppRunner(app, shutdown_timeout=WAIT, handler_cancellation=handler_cancellation)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
        await mount.close()
    assert leftover_tasks() == set()


def leftover_tasks() -> set[asyncio.Task[Any]]:
    """Tasks still alive besides this one and sse_starlette's per-loop shutdown watcher."""
    return {
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task()
        and getattr(task.get_coro(), "__qualname__", "") != "_shutdown_watcher"
    }


# -- the SDK's MCP client against a tiny MCPServer -------------------------------------------


class Gate:
    """Holds the slow tool until the test opens it, and records how the tool ended."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        self.cancelled = asyncio.Event()


def tiny_server(gate: Gate) -> MCPServer:
    server = MCPServer(name="tiny", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Returns the text it was given."""
        return text

    @server.tool()
    async def wait_for_gate(ctx: Context) -> str:
        """Reports that it is waiting, then returns once the test opens the gate."""
        await ctx.report_progress(0.5, 1.0, "waiting for the gate")
        gate.entered.set()
        try:
            async with asyncio.timeout(WAIT):
                await gate.opened.wait()
        except asyncio.CancelledError:
            gate.cancelled.set()
            raise
        return "opened"

    return server


def mcp_mount(gate: Gate) -> AsgiMount:
    """The tiny server's streamable HTTP app, built as channels/mcp/server.py builds it."""
    asgi = tiny_server(gate).streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    return AsgiMount(asgi, "/mcp")


@asynccontextmanager
async def mcp_client(url: str, mode: str, content_types: list[str]) -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP, recording the content type of each POST answer."""

    async def record(response: httpx2.Response) -> None:
        if response.request.method == "POST":
            content_types.append(response.headers.get("content-type", ""))

    async with (
        httpx2.AsyncClient(event_hooks={"response": [record]}) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


MODES = pytest.mark.parametrize("mode", ["auto", "legacy"])
#: aiohttp's default leaves a handler running when its client hangs up; True cancels it.
CANCELLATION = pytest.mark.parametrize("handler_cancellation", [False, True])


@MODES
@CANCELLATION
async def test_the_mcp_client_lists_and_calls_tools_on_the_mounted_endpoint(
    mode: str, handler_cancellation: bool
) -> None:
    async with (
        serving(mcp_mount(Gate()), handler_cancellation) as base,
        mcp_client(f"{base}/mcp", mode, []) as client,
        asyncio.timeout(WAIT),
    ):
        names = {tool.name for tool in (await client.list_tools()).tools}
        echoed = await client.call_tool("echo", {"text": "hello"})
    assert names == {"echo", "wait_for_gate"}
    assert echoed.structured_content == {"result": "hello"}


@MODES
@CANCELLATION
async def test_a_long_tool_call_streams_its_progress_and_then_its_result(
    mode: str, handler_cancellation: bool
) -> None:
    gate, progressed = Gate(), asyncio.Event()
    content_types: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progressed.set()

    async with (
        serving(mcp_mount(gate), handler_cancellation) as base,
        mcp_client(f"{base}/mcp", mode, content_types) as client,
        asyncio.timeout(WAIT),
    ):
        call = asyncio.create_task(
            client.call_tool("wait_for_gate", {}, progress_callback=on_progress)
        )
        await progressed.wait()
        echoed = await client.call_tool("echo", {"text": "meanwhile"})
        assert not call.done()
        gate.opened.set()
        result = await call
    assert echoed.structured_content == {"result": "meanwhile"}
    assert result.structured_content == {"result": "opened"}
    assert any(kind.startswith("text/event-stream") for kind in content_types)


@CANCELLATION
async def test_a_client_that_abandons_a_long_call_cancels_the_tool_on_the_server(
    handler_cancellation: bool,
) -> None:
    gate = Gate()
    async with (
        serving(mcp_mount(gate), handler_cancellation) as base,
        mcp_client(f"{base}/mcp", "auto", []) as client,
        asyncio.timeout(WAIT),
    ):
        call = asyncio.create_task(client.call_tool("wait_for_gate", {}))
        await gate.entered.wait()
        call.cancel()
        await gate.cancelled.wait()
        echoed = await client.call_tool("echo", {"text": "still here"})
    assert call.cancelled()
    assert echoed.structured_content == {"result": "still here"}


async def test_the_mcp_endpoint_refuses_a_request_that_does_not_accept_event_streams() -> None:
    async with (
        serving(mcp_mount(Gate())) as base,
        aiohttp.ClientSession() as session,
        asyncio.timeout(WAIT),
        session.post(f"{base}/mcp", json={}, headers={"Accept": "application/json"}) as response,
    ):
        assert response.status == 406


# -- a bare ASGI app ---------------------------------------------------------------------------


Route = Callable[[Scope, Receive, Send], Awaitable[None]]


class RawApp:
    """A raw ASGI app: each route under /raw/ exercises one part of the mount."""

    def __init__(self, *, startup_failure: str | None = None, heeds_shutdown: bool = True) -> None:
        self.startup_failure = startup_failure
        self.heeds_shutdown = heeds_shutdown
        self.resume = asyncio.Event()
        self.ended = asyncio.Event()
        self.outcome = ""
        self.shut_down = asyncio.Event()
        self.routes: dict[str, Route] = {
            "echo": self.echo,
            "scope": self.scope,
            "stream": self.stream,
            "hang": self.hang,
            "boom": self.boom,
            "midway": self.midway,
            "silent": self.silent,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
        else:
            await self.routes[scope["path"].split("/")[2]](scope, receive, send)

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        if self.startup_failure is not None:
            await send({"type": "lifespan.startup.failed", "message": self.startup_failure})
            return
        scope["state"]["greeting"] = "hello"
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        self.shut_down.set()
        if not self.heeds_shutdown:
            await asyncio.Event().wait()  # until cancelled
        await send({"type": "lifespan.shutdown.complete"})

    async def echo(self, scope: Scope, receive: Receive, send: Send) -> None:
        digest, length, chunks, more = hashlib.sha256(), 0, 0, True
        while more:
            message = await receive()
            digest.update(message["body"])
            length, chunks = length + len(message["body"]), chunks + 1
            more = message["more_body"]
        body = {"length": length, "sha256": digest.hexdigest(), "chunks": chunks}
        headers = [(b"x-dup", b"one"), (b"x-dup", b"two"), (b"set-cookie", b"a=1")]
        await respond(send, json.dumps(body).encode(), (*headers, (b"set-cookie", b"b=2")))

    async def scope(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = {k: v for k, v in scope.items() if k != "headers"}
        seen["raw_path"] = scope["raw_path"].decode()
        seen["query_string"] = scope["query_string"].decode()
        seen["headers"] = [[k.decode(), v.decode()] for k, v in scope["headers"]]
        await respond(send, json.dumps(seen).encode())

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        async with asyncio.timeout(WAIT):
            await self.resume.wait()
        await send({"type": "http.response.body", "body": b"second", "more_body": False})

    async def hang(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.outcome = "disconnect"
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            raise
        finally:
            self.ended.set()

    async def boom(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("the app broke before answering")

    async def midway(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("the app broke while answering")

    async def silent(self, scope: Scope, receive: Receive, send: Send) -> None:
        return


async def respond(send: Send, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    json_type = (b"content-type", b"application/json")
    await send({"type": "http.response.start", "status": 200, "headers": [json_type, *headers]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def raw() -> RawApp:
    return RawApp()


@pytest.fixture
async def raw_url(raw: RawApp) -> AsyncIterator[str]:
    async with serving(AsgiMount(raw, "/raw")) as base:
        yield f"{base}/raw"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_body_of_several_megabytes_reaches_the_app_whole_in_chunks(
    raw_url: str, session: aiohttp.ClientSession
) -> None:
    async with (
        asyncio.timeout(WAIT),
        session.post(f"{raw_url}/echo", data=io.BytesIO(BIG)) as response,
    ):
        seen = await response.json()
    assert seen["length"] == len(BIG)
    assert seen["sha256"] == hashlib.sha256(BIG).hexdigest()
    assert seen["chunks"] > 1


async def test_duplicate_response_headers_all_reach_the_client(
    raw_url: str, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(WAIT), session.post(f"{raw_url}/echo", data=b"x") as response:
        assert response.headers.getall("x-dup") == ["one", "two"]
        assert response.headers.getall("set-cookie") == ["a=1", "b=2"]


async def test_the_scope_describes_the_request_faithfully(
    raw_url: str, session: aiohttp.ClientSession
) -> None:
    url = URL(f"{raw_url}/scope/a%20b?x=1&x=2&q=%2F", encoded=True)
    headers = CIMultiDict([("X-Dup", "1"), ("X-Dup", "2")])
    async with asyncio.timeout(WAIT), session.get(url, headers=headers) as response:
        seen = await response.json()
    assert seen["type"] == "http"
    assert seen["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert (seen["http_version"], seen["method"], seen["scheme"]) == ("1.1", "GET", "http")
    assert (seen["path"], seen["raw_path"]) == ("/raw/scope/a b", "/raw/scope/a%20b")
    assert (seen["query_string"], seen["root_path"]) == ("x=1&x=2&q=%2F", "")
    assert [h for h in seen["headers"] if h[0] == "x-dup"] == [["x-dup", "1"], ["x-dup", "2"]]
    assert seen["client"][0] == "127.0.0.1"
    assert seen["server"] == [url.host, url.port]
    assert seen["state"] == {"greeting": "hello"}


async def test_a_streamed_response_reaches_the_client_chunk_by_chunk(
    raw: RawApp, raw_url: str, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(WAIT), session.get(f"{raw_url}/stream") as response:
        first = await response.content.readany()
        raw.resume.set()
        rest = await response.content.read()
    assert (first, rest) == (b"first", b"second")


@CANCELLATION
async def test_a_client_that_disconnects_mid_stream_ends_the_app(
    session: aiohttp.ClientSession, handler_cancellation: bool
) -> None:
    raw = RawApp()
    async with serving(AsgiMount(raw, "/raw"), handler_cancellation) as base, asyncio.timeout(WAIT):
        async with session.get(f"{base}/raw/hang") as response:
            assert await response.content.readany() == b"first"
            response.close()
        await raw.ended.wait()
    assert raw.outcome == "disconnect"


async def test_an_app_that_raises_before_answering_gives_500_and_is_logged(
    raw_url: str, session: aiohttp.ClientSession
) -> None:
    with capture_logs() as logs:
        async with asyncio.timeout(WAIT), session.get(f"{raw_url}/boom") as response:
            assert response.status == 500
    failed = [log for log in logs if log["event"] == "asgi.app_failed"]
    assert [(log["log_level"], log["started"]) for log in failed] == [("error", False)]


async def test_an_app_that_raises_mid_response_cuts_the_stream_short(
    raw_url: str, session: aiohttp.ClientSession
) -> None:
    with capture_logs() as logs:
        async with asyncio.timeout(WAIT), session.get(f"{raw_url}/midway") as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    assert [log["started"] for log in logs if log["event"] == "asgi.app_failed"] == [True]


async def test_an_app_that_returns_without_answering_gives_500(
    raw_url: str, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(WAIT), session.get(f"{raw_url}/silent") as response:
        assert response.status == 500


async def test_a_failed_lifespan_startup_makes_start_raise() -> None:
    mount = AsgiMount(RawApp(startup_failure="no database"), "/raw")
    with pytest.raises(LifespanError, match="no database"):
        await mount.start()
    await mount.close()
    assert leftover_tasks() == set()


async def test_close_runs_the_lifespan_shutdown_once() -> None:
    raw = RawApp()
    mount = AsgiMount(raw, "/raw")
    await mount.start()
    await mount.close()
    await mount.close()
    assert raw.shut_down.is_set()
    assert leftover_tasks() == set()


async def test_close_cancels_a_lifespan_that_ignores_shutdown() -> None:
    raw = RawApp(heeds_shutdown=False)
    mount = AsgiMount(raw, "/raw", lifespan_timeout=0.1)
    await mount.start()
    with capture_logs() as logs:
        async with asyncio.timeout(WAIT):
            await mount.close()
    assert raw.shut_down.is_set()
    assert [log["event"] for log in logs] == ["asgi.shutdown_timed_out"]
    assert leftover_tasks() == set()
