"""Agents' keyed tool calls: a call sent again with its idempotency key is not made twice.

A client of a tool that changes things (``post_update``, ``add_artifact``,
``update_task_status``, ``release_task``) may pass an ``idempotency_key`` of its choosing. The
first call with a key records (agent, key), with the tool, a digest of its arguments and what it
produced, in the same transaction as its effect. When the same agent sends the key again (its
connection broke before the answer came), the call returns what the first one did and changes
nothing: no second post, no second artifact, and no refusal of a move already made. A key names
one call: sent with another tool or other arguments, it is refused. Keys are kept for
``KEPT_FOR``, then pruned.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.errors import Conflict, InvalidInput
from bot.ports.tool_requests import RecordedRequest, ToolRequestWrites

#: The agent tools that change things, which take an ``idempotency_key``.
KEYED_TOOLS = frozenset({"post_update", "add_artifact", "update_task_status", "release_task"})
MAX_KEY_CHARS = 200
#: How long a key is remembered: far longer than any client goes on sending a call again.
KEPT_FOR = timedelta(hours=24)


class KeyReused(InvalidInput):
    """The key was sent before with another tool or other arguments."""


@dataclass(frozen=True)
class ToolRequest:
    """One call of a tool that changes things, named by the key its client chose."""

    key: str
    tool: str
    #: A digest of the call's arguments, so that one key cannot name two different calls.
    digest: str


def tool_request(key: str | None, tool: str, **arguments: object) -> ToolRequest | None:
    """The call ``key`` names: ``tool`` with ``arguments`` (JSON values); None without a key.

    Raises InvalidInput, before anything is read, for a key that is blank, longer than
    ``MAX_KEY_CHARS`` or holds characters that do not print.
    """
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise InvalidInput(f"An idempotency_key must be 1 to {MAX_KEY_CHARS} printable characters.")
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
    return ToolRequest(key, tool, hashlib.sha256(canonical.encode()).hexdigest())


async def recorded_before(
    unit: ToolRequestWrites,
    agent: str,
    request: ToolRequest | None,
    task_id: int,
    at: datetime,
) -> RecordedRequest | None:
    """The call first recorded with ``request``'s key, whose outcome the caller then returns,
    changing nothing; or None, the key now recorded in this transaction, and the caller makes
    the call (None too without a request).

    Raises KeyReused when the key was sent with another tool or other arguments, and Conflict
    when the call recorded with it cannot be read (it was forgotten that instant): sent again
    with the same key, the call is then made.
    """
    if request is None:
        return None
    if await unit.record_tool_request(
        agent, request.key, request.tool, request.digest, task_id, at
    ):
        return None
    first = await unit.get_tool_request(agent, request.key)
    if first is None:
        raise Conflict("A call with this idempotency_key was just forgotten; send it again.")
    if first.tool != request.tool:
        raise KeyReused(
            f"This idempotency_key was already used for {first.tool}; use a new key for each call."
        )
    if first.digest != request.digest or first.task_id != task_id:
        raise KeyReused(
            f"This idempotency_key was already used for a {first.tool} call with other "
            "arguments; use a new key for each call."
        )
    return first


async def record_result(
    unit: ToolRequestWrites,
    agent: str,
    request: ToolRequest | None,
    result: Mapping[str, object],
) -> None:
    """Stores what the call holding ``request``'s key produced (nothing without a request)."""
    if request is not None:
        await unit.record_tool_result(agent, request.key, result)


async def prune(unit: ToolRequestWrites, now: datetime) -> int:
    """Forgets the keys recorded more than ``KEPT_FOR`` before ``now``; returns how many."""
    return await unit.prune_tool_requests(now - KEPT_FOR)
