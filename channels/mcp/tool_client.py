"""The MCP SDK's client behind ``bot.runtime.toolbox.ToolConnector``: built-in agents' servers.

A stdio server is started as its command, in a process group of its own, with only the SDK's
small default environment (no threadwork secret reaches it); closing the session closes its
stdin, then ends the whole group. Its stderr goes to a temporary file, whose last line says why
a server that would not start stopped. An http server is reached over streamable HTTP with the
stored headers on every request.
"""

import json
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import IO, Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import REQUEST_TIMEOUT, CallToolResult, TextContent

from bot.runtime.toolbox import OfferedTool, ToolOutput, ToolServerFailed
from bot.tool_servers import ToolServerLaunch, Transport

#: Pages of ``tools/list`` read at most: a server that pages forever cannot hold a run up.
MAX_TOOL_PAGES = 20
#: How long an http request may wait for its connection and for a byte of its answer.
HTTP_TIMEOUT = httpx2.Timeout(30, read=300)


class McpSession:
    """Implements ``ToolSession`` on a connected SDK client."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def list_tools(self) -> list[OfferedTool]:
        tools: list[OfferedTool] = []
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            page = await self._client.list_tools(cursor=cursor)
            tools += [
                OfferedTool(t.name, t.description or "", dict(t.input_schema)) for t in page.tools
            ]
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    async def call_tool(self, name: str, arguments: dict[str, Any], limit_s: float) -> ToolOutput:
        try:
            result = await self._client.call_tool(name, arguments, read_timeout_seconds=limit_s)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise TimeoutError(exc.message) from None
            raise ToolServerFailed(f"MCP error {exc.code}: {exc.message}") from None
        return ToolOutput(result_text(result), is_error=result.is_error)


def result_text(result: CallToolResult) -> str:
    """The result as text: its text blocks, and a note for each block of another kind."""
    parts = [
        block.text if isinstance(block, TextContent) else f"[{block.type} content not shown]"
        for block in result.content
    ]
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


class McpToolConnector:
    """Implements ``ToolConnector`` with the official MCP client (stdio or streamable HTTP)."""

    @asynccontextmanager
    async def connect(self, launch: ToolServerLaunch) -> AsyncIterator[McpSession]:
        server = launch.server
        async with AsyncExitStack() as stack:
            if server.transport is Transport.STDIO:
                errlog = stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8"))  # noqa: SIM115  # closed by the stack
                params = StdioServerParameters(
                    command=server.command[0], args=[*server.command[1:]]
                )
                client = Client(stdio_client(params, errlog=errlog))
            else:
                errlog = None
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(headers=dict(launch.headers), timeout=HTTP_TIMEOUT)
                )
                assert server.url is not None  # an http server always has one
                client = Client(streamable_http_client(server.url, http_client=http))
            try:
                await stack.enter_async_context(client)
            except Exception as exc:  # whatever the SDK raises, this server did not start
                raise ToolServerFailed(_why_not_started(exc, errlog)) from None
            yield McpSession(client)


def _why_not_started(exc: Exception, errlog: IO[str] | None) -> str:
    """A line saying why the server did not start: the error, and its stderr's last line."""
    while isinstance(exc, ExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]  # the SDK's task groups wrap the error that ended them
    why = exc.message if isinstance(exc, MCPError) else str(exc) or type(exc).__name__
    last = _last_line(errlog) if errlog is not None else ""
    return f"{why} ({last})" if last else why


def _last_line(errlog: IO[str]) -> str:
    # pread, not seek and read: the server's stderr shares this file's offset.
    fd = errlog.fileno()
    size = os.fstat(fd).st_size
    tail = os.pread(fd, 4000, max(0, size - 4000)).decode("utf-8", "replace")
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
