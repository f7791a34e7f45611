"""Agents' keyed tool calls, recorded once per (agent, idempotency key)."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class RecordedRequest:
    """An agent's keyed tool call as its transaction recorded it (``bot.tool_requests``)."""

    tool: str
    #: The digest of the call's arguments.
    digest: str
    task_id: int
    #: What the call produced (the artifact it added, the epoch it left), once it was made.
    result: Mapping[str, object] | None
    at: datetime


class ToolRequestWrites(Protocol):
    """Agents' keyed tool calls, each recorded in the transaction of its effect, once per
    (agent, idempotency key)."""

    async def record_tool_request(
        self, agent: str, key: str, tool: str, digest: str, task_id: int, at: datetime
    ) -> bool:
        """Records the call under (agent, key); False when a call was recorded under it before.
        A concurrent transaction that recorded the key and has not ended is waited for: False
        once it commits, True if it rolls back."""
        ...

    async def get_tool_request(self, agent: str, key: str) -> RecordedRequest | None: ...

    async def record_tool_result(self, agent: str, key: str, result: Mapping[str, object]) -> None:
        """Stores what the call holding (agent, key) produced, in the same transaction."""
        ...

    async def prune_tool_requests(self, before: datetime) -> int:
        """Forgets the calls recorded before ``before``; returns how many."""
        ...
