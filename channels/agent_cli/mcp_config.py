"""The MCP client configuration a worker's commands read: threadwork's endpoint and the token.

Written once per worker into a private directory (mode 0700, files 0600), never into a
working directory, where a command could commit it. ``mcp.json`` has the ``mcpServers`` shape
most MCP clients read (its path is THREADWORK_MCP_CONFIG); ``gemini-settings.json`` is the
same server in Gemini CLI's own settings shape.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER = "threadwork"


@dataclass(frozen=True)
class McpConfig:
    """Where the generated files are."""

    path: Path
    gemini_settings: Path


def servers(url: str, token: str) -> dict[str, Any]:
    """The ``mcpServers`` document for threadwork's endpoint at ``url``."""
    headers = {"Authorization": f"Bearer {token}"}
    return {"mcpServers": {SERVER: {"type": "http", "url": url, "headers": headers}}}


def gemini_settings(url: str, token: str) -> dict[str, Any]:
    """Gemini CLI's settings for the same server: streamable HTTP is ``httpUrl`` there, and a
    trusted server's tools run without asking (nobody is there to answer)."""
    headers = {"Authorization": f"Bearer {token}"}
    return {"mcpServers": {SERVER: {"httpUrl": url, "headers": headers, "trust": True}}}


def write_private(path: Path, document: dict[str, Any]) -> None:
    """Writes ``document`` as JSON to a new file only its owner can read (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(document, file, indent=2)


@contextmanager
def mcp_config(url: str, token: str) -> Iterator[McpConfig]:
    """The generated files, in a private directory removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="threadwork-worker-"))
    try:
        config = McpConfig(directory / "mcp.json", directory / "gemini-settings.json")
        write_private(config.path, servers(url, token))
        write_private(config.gemini_settings, gemini_settings(url, token))
        yield config
    finally:
        shutil.rmtree(directory, ignore_errors=True)
