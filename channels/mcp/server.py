"""Serves the tool set at ``/mcp`` (streamable HTTP) to agents holding a bearer token.

A request without a live token is refused with 401 before it reaches MCP; inside, each tool call
is scoped to the token's agent.
"""

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import structlog
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from bot.errors import DomainError, RateLimited
from bot.limits import CallBudget
from bot.registry import AgentRegistry, token_hash
from bot.tools import TaskTools, ToolsFor
from channels.mcp.task_server import build_tool_server

logger = structlog.get_logger(__name__)

MCP_PATH = "/mcp"


class Unauthenticated(DomainError):
    code = "unauthenticated"


def bearer(headers: Mapping[str, str] | None) -> str | None:
    """The bearer token in ``headers``, if any."""
    value = (headers or {}).get("authorization") or (headers or {}).get("Authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def build_mcp_server(
    registry: AgentRegistry, tools_for: ToolsFor, budget: CallBudget | None = None
) -> MCPServer:
    """The tool server whose callers are identified by their bearer token; each token's tool
    calls are counted against ``budget``."""

    async def resolve(headers: Mapping[str, str] | None) -> TaskTools:
        token = bearer(headers)
        agent = await registry.agent_for_token(token) if token else None
        if agent is None or token is None:
            raise Unauthenticated("A valid agent token is required (Authorization: Bearer ...).")
        wait = budget.take(token_hash(token)) if budget is not None else None
        if wait is not None:
            raise RateLimited(
                f"rate_limited: this token made too many tool calls in the last minute; retry "
                f"in {math.ceil(wait)} s."
            )
        return tools_for(agent.name)

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


#: Loopback names a local client may use whatever HOST is bound: a DNS-rebinding page always
#: arrives under its own (foreign) name, never one of these.
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def _authority(host: str) -> str:
    """``host`` as it appears in a Host header (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def transport_security(public_url: str | None, host: str) -> TransportSecuritySettings:
    """The Host and Origin values the endpoint accepts: those of ``public_url`` (the address
    agents and browsers use, THREADWORK_PUBLIC_URL), and the bound ``host`` and loopback on any
    port, for local clients. Anything else is refused by the SDK (421 for a Host, 403 for an
    Origin), whatever ``host`` is bound to."""
    local = dict.fromkeys([_authority(host), *_LOOPBACK])
    hosts = [f"{name}:*" for name in local]
    origins = [f"http://{name}:*" for name in local]
    if public_url:
        url = urlsplit(public_url)
        assert url.hostname is not None  # checked by Settings
        name = _authority(url.hostname.lower())
        default = 443 if url.scheme == "https" else 80
        port = url.port or default
        hosts += [f"{name}:{port}"] + ([name] if port == default else [])
        origins += [f"{url.scheme}://{name}:{port}"] + (
            [f"{url.scheme}://{name}"] if port == default else []
        )
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def build_mcp_app(
    server: MCPServer, registry: AgentRegistry, security: TransportSecuritySettings
) -> ASGIApp:
    """The streamable HTTP app: a live token first, then the SDK's Host and Origin checks."""
    app = server.streamable_http_app(streamable_http_path=MCP_PATH, transport_security=security)
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
