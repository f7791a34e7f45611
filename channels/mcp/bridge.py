"""A stdio MCP server that forwards every call to threadwork's HTTP MCP endpoint.

For MCP clients that only launch local commands: they run ``threadwork mcp --url ... --token
...`` and see the same tools, scoped to the token's agent.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from bot.tools import INSTRUCTIONS


def build_bridge(remote: Client) -> Server[Any]:
    """A server whose tools are the remote's, each call relayed as is."""

    async def list_tools(
        _ctx: Any, _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return await remote.list_tools()

    async def call_tool(_ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await remote.call_tool(params.name, params.arguments or {})

    return Server(
        "threadwork", instructions=INSTRUCTIONS, on_list_tools=list_tools, on_call_tool=call_tool
    )


@asynccontextmanager
async def remote_client(url: str, token: str) -> AsyncIterator[Client]:
    """The SDK's client on threadwork's endpoint, authenticated as the token's agent."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=330)) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def run_stdio_bridge(url: str, token: str) -> None:
    """Serves the bridge on this process's stdin and stdout until the client hangs up."""
    async with remote_client(url, token) as remote:
        server = build_bridge(remote)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
