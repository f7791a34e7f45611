"""The worker's link against a small MCP server of its own, reached through httpx's ASGI
transport: the SDK's real client and server, no network, each wait bounded."""

import asyncio

import httpx2
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from bot.tools import Done, Refusal, Refused
from channels.agent_cli.link import Link

URL = "http://localhost:8000/mcp"  # the server accepts a local host with a port


class Service:
    """An MCP server whose ``post_update`` answers with a JSON-RPC error; it counts calls."""

    def __init__(self) -> None:
        self.posts = 0
        self.server = MCPServer("stand-in")
        self.server.tool()(self.post_update)
        self.server.tool()(self.list_my_tasks)
        self.app = self.server.streamable_http_app()

    def post_update(self, text: str) -> str:
        """Refuses every post, as a JSON-RPC error."""
        self.posts += 1
        raise MCPError(code=INVALID_PARAMS, message=f"not_allowed: no posts ({text})")

    def list_my_tasks(self) -> dict[str, list[str]]:
        """No tasks."""
        return {"tasks": []}


async def test_a_json_rpc_error_is_returned_as_a_refusal_and_the_call_is_not_sent_again() -> None:
    service = Service()
    link = Link(URL, "tw-token", transport=httpx2.ASGITransport(app=service.app))
    async with service.server.session_manager.run():  # in the test's task: anyio's scopes ask
        try:
            async with asyncio.timeout(10):
                refused = await link.call("post_update", {"text": "hello"})
                listed = await link.call("list_my_tasks", {})
        finally:
            await link.close()

    assert refused == Refused(Refusal.NOT_ALLOWED, "post_update: not_allowed: no posts (hello)")
    assert service.posts == 1
    assert isinstance(listed, Done)  # the same session goes on serving
