"""Serves the tool set at ``/mcp`` (streamable HTTP) to agents holding a bearer token.

A request without a live token is refused with 401 before it reaches MCP; inside, each tool call
is scoped to the token's agent.
"""

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import structlog
import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

from bot.errors import DomainError
from bot.registry import AgentRegistry
from bot.tools import TaskTools, ToolsFor, build_tool_server

logger = structlog.get_logger(__name__)

MCP_PATH = "/mcp"


class Unauthenticated(DomainError):
    code = "unauthenticated"


def bearer(headers: Mapping[str, str] | None) -> str | None:
    """The bearer token in ``headers``, if any."""
    value = (headers or {}).get("authorization") or (headers or {}).get("Authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def build_mcp_server(registry: AgentRegistry, tools_for: ToolsFor) -> MCPServer:
    """The tool server whose callers are identified by their bearer token."""

    async def resolve(headers: Mapping[str, str] | None) -> TaskTools:
        token = bearer(headers)
        agent = await registry.agent_for_token(token) if token else None
        if agent is None:
            raise Unauthenticated("A valid agent token is required (Authorization: Bearer ...).")
        return tools_for(agent.name, None)

    return build_tool_server(resolve)


class RequireToken:
    """ASGI middleware: 401 for any request without a live agent token."""

    def __init__(self, app: ASGIApp, registry: AgentRegistry) -> None:
        self._app = app
        self._registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        token = bearer(headers)
        if token is None or await self._registry.agent_for_token(token) is None:
            await _unauthorized(send)
            return
        await self._app(scope, receive, send)


async def _unauthorized(send: Send) -> None:
    body = json.dumps({"error": "a valid agent token is required"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Bearer realm="threadwork"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_mcp_app(server: MCPServer, registry: AgentRegistry, host: str) -> ASGIApp:
    app = server.streamable_http_app(streamable_http_path=MCP_PATH, host=host)
    return RequireToken(app, registry)


class McpHttpServer:
    """Runs the MCP app with uvicorn inside the service's event loop."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="mcp-http")
        while not self._server.started:
            if self._task.done():
                await self._task  # surfaces the start-up error
                return
            await asyncio.sleep(0.01)
        logger.info("mcp.started", port=self.port)

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def close(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
