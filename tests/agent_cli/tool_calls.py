"""The MCP tool call a request body carries, as a proxy or a transport in the tests sees it."""

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """A JSON-RPC ``tools/call``: the tool and its arguments."""

    tool: str
    arguments: dict[str, Any]

    @property
    def key(self) -> str | None:
        """The idempotency key it was sent with, if any."""
        key = self.arguments.get("idempotency_key")
        return None if key is None else str(key)


def tool_call(body: bytes) -> ToolCall | None:
    """The call, when ``body`` is a JSON-RPC tool call."""
    try:
        message = json.loads(body) if body else None
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    params = message.get("params") or {}
    return ToolCall(str(params.get("name")), dict(params.get("arguments") or {}))
