"""A small stdio MCP server for the tool box's tests: a big answer, a failing tool, a hang.

Run as ``python toy_server.py``; it speaks MCP on stdin and stdout until stdin closes.
"""

import asyncio
import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("toy")


@server.tool()
def echo(text: str) -> str:
    """Answers with ``text``."""
    return text


@server.tool()
def big(chars: int) -> str:
    """Answers with ``chars`` characters."""
    return "x" * chars


@server.tool()
def broken() -> str:
    """Always fails."""
    raise ToolError("the toy tool broke on purpose")


@server.tool()
def die() -> str:
    """Ends the server's process mid-call."""
    os._exit(3)


@server.tool()
async def hang() -> str:
    """Never answers (until the client gives up and the server is stopped)."""
    await asyncio.Event().wait()
    return "unreachable"


if __name__ == "__main__":
    server.run("stdio")
