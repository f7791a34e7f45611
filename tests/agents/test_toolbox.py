"""The tool box over the real MCP client and real stdio servers: names, allow-lists, bounds,
timeouts, failures to start, and no process left behind."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

from bot.runtime.toolbox import ToolBox, ToolBoxSettings, ToolOutput, open_toolbox
from bot.supervisor import Supervisor
from bot.tool_servers import ToolServer, ToolServerLaunch, Transport
from channels.mcp.asgi import AsgiMount
from channels.mcp.tool_client import McpToolConnector
from tests.agents.test_asgi_mount import serving
from tests.agents.tool_servers import (
    COMMITS,
    git_server,
    make_repository,
    process_gone,
    toy_server,
    with_pidfile,
)

FAST = ToolBoxSettings(
    start_timeout_s=20, call_timeout_s=1.0, max_result_chars=1000, close_timeout_s=10
)


def stdio(label: str, command: list[str], allow: tuple[str, ...] | None = None) -> ToolServerLaunch:
    return ToolServerLaunch(ToolServer(label, Transport.STDIO, command=tuple(command), allow=allow))


@pytest.fixture
async def supervisor() -> AsyncIterator[Supervisor]:
    supervisor = Supervisor()
    yield supervisor
    await supervisor.close()


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return make_repository(tmp_path / "repo")


async def opened(
    supervisor: Supervisor, *launches: ToolServerLaunch, settings: ToolBoxSettings = FAST
) -> AsyncIterator[ToolBox]:
    async with (
        asyncio.timeout(60),
        open_toolbox(McpToolConnector(), launches, supervisor.spawn, settings) as box,
    ):
        yield box


async def test_a_servers_tools_are_offered_as_label__tool_with_their_schemas(
    supervisor: Supervisor, repository: Path
) -> None:
    async for box in opened(supervisor, stdio("git", git_server(repository))):
        names = [spec.name for spec in box.specs]
        assert "git__git_log" in names
        assert all(name.startswith("git__") for name in names)
        [log] = [spec for spec in box.specs if spec.name == "git__git_log"]
        assert "repo_path" in log.input_schema["properties"]
        call = await box.call("git__git_log", {"repo_path": str(repository)})
        assert not call.output.is_error
        assert all(message in call.output.text for message in COMMITS)
        assert box.failures == []


async def test_allow_offers_only_the_named_tools(supervisor: Supervisor, repository: Path) -> None:
    launch = stdio("git", git_server(repository), allow=("git_log", "git_status"))
    async for box in opened(supervisor, launch):
        assert sorted(spec.name for spec in box.specs) == ["git__git_log", "git__git_status"]
        assert not box.owns("git__git_commit")


async def test_a_big_result_is_cut_to_the_bound_and_says_so(supervisor: Supervisor) -> None:
    async for box in opened(supervisor, stdio("toy", toy_server())):
        call = await box.call("toy__big", {"chars": 5000})
        small = await box.call("toy__echo", {"text": "hello"})
    assert call.truncated
    assert call.output.text.startswith("x" * 1000)
    assert call.output.text.endswith("[truncated: 4000 more characters not shown]")
    assert call.event_data()["truncated"] is True
    assert (small.output.text, small.truncated) == ("hello", False)


async def test_a_tools_error_and_a_call_past_the_timeout_come_back_as_errors(
    supervisor: Supervisor,
) -> None:
    async for box in opened(supervisor, stdio("toy", toy_server())):
        broken = await box.call("toy__broken", {})
        hung = await box.call("toy__hang", {})
        after = await box.call("toy__echo", {"text": "still here"})
    assert broken.output.is_error
    assert "broke on purpose" in broken.output.text
    assert hung.output.is_error
    assert hung.output.text == "toy__hang did not answer within 1 s."
    assert hung.event_data() | {"duration_ms": 0} == {
        "tool": "toy__hang",
        "duration_ms": 0,
        "ok": False,
        "error": "toy__hang did not answer within 1 s.",
        "arguments": {},
    }
    assert (after.output.text, after.output.is_error) == ("still here", False)


async def test_large_arguments_are_counted_in_the_event_not_recorded(
    supervisor: Supervisor,
) -> None:
    async for box in opened(supervisor, stdio("toy", toy_server())):
        call = await box.call("toy__echo", {"text": "y" * 2000})
    data = call.event_data()
    assert "arguments" not in data
    assert data["arguments_chars"] == len('{"text": "' + "y" * 2000 + '"}')


async def test_servers_that_do_not_start_are_failures_and_the_others_still_serve(
    supervisor: Supervisor, repository: Path, tmp_path: Path
) -> None:
    launches = [
        stdio("missing", [str(tmp_path / "no-such-command")]),
        stdio("norepo", git_server(tmp_path / "not-a-repository")),
        ToolServerLaunch(ToolServer("web", Transport.HTTP, url="http://127.0.0.1:9/mcp")),
        ToolServerLaunch(
            ToolServer("locked", Transport.HTTP, url="http://127.0.0.1:9/mcp", header_names=("A",)),
            problem="its stored headers cannot be decrypted with the configured keys",
        ),
        stdio("git", git_server(repository)),
    ]
    async for box in opened(supervisor, *launches):
        reasons = {f.label: f.reason for f in box.failures}
        assert box.owns("git__git_log")
    assert sorted(reasons) == ["locked", "missing", "norepo", "web"]
    assert "No such file or directory" in reasons["missing"]
    assert "does not exist" in reasons["norepo"]  # the server's own stderr says why
    assert reasons["locked"].startswith("its stored headers cannot be decrypted")


async def test_a_server_slower_to_start_than_the_bound_is_a_failure_and_its_process_is_ended(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    pidfile = tmp_path / "slow.pid"
    # A shell that writes its pid and then never speaks MCP: it never starts.
    silent = ["/bin/sh", "-c", f"echo $$ > {pidfile}; exec tail -f /dev/null"]
    settings = ToolBoxSettings(start_timeout_s=1.5, close_timeout_s=10)
    async for box in opened(supervisor, stdio("slow", silent), settings=settings):
        assert [f.reason for f in box.failures] == ["it did not start within 1.5 s"]
    await supervisor.drain()
    assert process_gone(int(pidfile.read_text()))


async def test_closing_the_box_stops_every_server_process_and_its_group(
    supervisor: Supervisor, repository: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "git.pid"
    async for box in opened(
        supervisor, stdio("git", with_pidfile(git_server(repository), pidfile))
    ):
        pid = int(pidfile.read_text())
        assert not process_gone(pid)
        assert box.owns("git__git_log")
    await supervisor.drain()
    assert process_gone(pid)


async def test_a_server_that_dies_mid_call_answers_errors_from_then_on(
    supervisor: Supervisor,
) -> None:
    async for box in opened(supervisor, stdio("toy", toy_server())):
        died = await box.call("toy__die", {})
        after = await box.call("toy__echo", {"text": "anyone?"})
    assert died.output == ToolOutput("toy__die failed: MCP error -32000: Connection closed", True)
    assert after.output.is_error
    assert "Connection closed" in after.output.text


def requiring(app: ASGIApp, authorization: str) -> ASGIApp:
    """``app`` answering 401 to any HTTP request without this Authorization header."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            dict(scope["headers"]).get(b"authorization") != authorization.encode()
        ):
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no"})
            return
        await app(scope, receive, send)

    return guarded


async def test_an_http_server_is_reached_with_its_stored_headers(supervisor: Supervisor) -> None:
    server = MCPServer(name="remote", log_level="WARNING")

    @server.tool()
    def shout(text: str) -> str:
        """Answers with ``text`` in capitals."""
        return text.upper()

    app = server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    mount = AsgiMount(requiring(app, "Bearer sesame"), "/mcp")
    async with serving(mount) as base:
        url = f"{base}/mcp"
        keyed = ToolServer("remote", Transport.HTTP, url=url, header_names=("Authorization",))
        launches = [
            ToolServerLaunch(keyed, headers={"Authorization": "Bearer sesame"}),
            ToolServerLaunch(ToolServer("nokey", Transport.HTTP, url=url)),
        ]
        async for box in opened(supervisor, *launches):
            call = await box.call("remote__shout", {"text": "hello"})
            reasons = {f.label: f.reason for f in box.failures}
    assert (call.output.text, call.output.is_error) == ("HELLO", False)
    assert list(reasons) == ["nokey"]
    assert reasons["nokey"] == "Server returned an error response"  # the 401, as the SDK says it
