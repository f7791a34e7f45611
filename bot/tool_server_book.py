"""The tool server book: which MCP servers each built-in agent's runs connect to.

Admins add and remove servers (``bot.admin``); a run asks for its agent's launches. Header values
are secrets: stored encrypted in the agent's secrets as ``tool:<label>`` (so ``threadwork secrets
rotate`` re-encrypts them with the API keys), decrypted only for a run, never listed.

The operator's :class:`~bot.tool_server_policy.ToolServerPolicy` is checked here, for every
channel alike: an add it does not permit is refused, and a stored server it no longer permits
(the operator narrowed a list since) is listed as such and is not started. The per-agent limit
holds for adds made at once, from any number of processes: storing a server locks its agent
first, so adds to one agent take turns, and each counts what those before it committed.
"""

import dataclasses
import json

from bot.agents import normalize_agent_name
from bot.clock import Clock
from bot.errors import InvalidInput, NotAllowed, NotFound
from bot.ports import Store, Unit
from bot.secrets import SecretBox
from bot.tool_server_policy import ToolServerPolicy
from bot.tool_servers import Stored, ToolServer, ToolServerAdd, ToolServerLaunch

#: The secret a tool server's header values are stored under (JSON of name -> value).
TOOL_HEADERS = "tool:{label}"
DEFAULT_MAX_TOOL_SERVERS = 8


class ToolServerBook:
    """Adds, lists and removes built-in agents' tool servers; their header values are stored
    encrypted, like API keys, and come back decrypted only for a run."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        secrets: SecretBox | None,
        max_servers: int,
        policy: ToolServerPolicy | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._secrets = secrets
        self._max = max_servers
        self._policy = policy or ToolServerPolicy()

    async def add_tool_server(self, name: str, added: ToolServerAdd) -> bool:
        """Stores the server (replacing one of the same label); True when it replaced one.
        Refused, changing nothing, when the operator does not permit it, for an external agent,
        past the limit, or with headers but no THREADWORK_SECRET_KEY."""
        handle, server = normalize_agent_name(name), added.server
        ciphertext = self._encrypt_headers(added)
        async with self._store.transaction() as unit:
            await _check_built_in(unit, handle, name)
            denial = self._policy.denial(server)
            if denial is not None:
                raise NotAllowed(denial.sentence)
            now = self._clock()
            # Locks the agent first, so adds take turns and what it says holds.
            stored = await unit.upsert_tool_server(handle, server, now)
            if stored is None:
                raise NotFound(f"There is no agent named `{name}`.")
            replaced = stored == Stored.REPLACED
            count = len(await unit.list_tool_servers(handle))
            if not replaced and count > self._max:
                raise InvalidInput(  # and the transaction, rolled back, stored nothing
                    f"`{handle}` already has {count - 1} tool servers, and {self._max} is the "
                    "most an agent may have (THREADWORK_AGENT_TOOL_SERVERS); remove one first."
                )
            secret = TOOL_HEADERS.format(label=server.label)
            if ciphertext is None:
                await unit.delete_agent_secret(handle, secret)
            else:
                await unit.set_agent_secret(handle, secret, ciphertext, now)
        return replaced

    async def remove_tool_server(self, name: str, label: str) -> None:
        """Deletes the server and its stored headers."""
        handle = normalize_agent_name(name)
        async with self._store.transaction() as unit:
            if await unit.get_agent(handle) is None:
                raise NotFound(f"There is no agent named `{name}`.")
            if not await unit.delete_tool_server(handle, label):
                raise NotFound(f"`{handle}` has no tool server `{label}`.")
            await unit.delete_agent_secret(handle, TOOL_HEADERS.format(label=label))

    async def list_tool_servers(self, name: str) -> list[ToolServer]:
        """The agent's servers by label, each the operator no longer permits marked
        ``denied``; header values are never part of them."""
        handle = normalize_agent_name(name)
        async with self._store.read() as reader:
            if await reader.get_agent(handle) is None:
                raise NotFound(f"There is no agent named `{name}`.")
            servers = await reader.list_tool_servers(handle)
        return [self._marked(server) for server in servers]

    def _marked(self, server: ToolServer) -> ToolServer:
        denial = self._policy.denial(server)
        return server if denial is None else dataclasses.replace(server, denied=denial.note)

    async def launches(self, name: str) -> list[ToolServerLaunch]:
        """What a run of the agent connects to (at most the limit, by label), headers
        decrypted; a server the operator no longer permits, or whose headers no configured
        key opens, says so instead, and the run reports it as not started."""
        async with self._store.read() as reader:
            servers = (await reader.list_tool_servers(name))[: self._max]
            stored = {
                s.label: await reader.get_agent_secret(name, TOOL_HEADERS.format(label=s.label))
                for s in servers
                if s.header_names
            }
        return [self._launch(server, stored.get(server.label)) for server in servers]

    def _launch(self, server: ToolServer, ciphertext: bytes | None) -> ToolServerLaunch:
        denial = self._policy.denial(server)
        if denial is not None:
            return ToolServerLaunch(
                server, problem=f"the operator does not permit it: {denial.note}"
            )
        if not server.header_names:
            return ToolServerLaunch(server)
        box = self._secrets
        if ciphertext is None or box is None or not box.can_decrypt(ciphertext):
            return ToolServerLaunch(
                server, problem="its stored headers cannot be decrypted with the configured keys"
            )
        return ToolServerLaunch(server, headers=json.loads(box.decrypt(ciphertext)))

    def _encrypt_headers(self, added: ToolServerAdd) -> bytes | None:
        if not added.headers:
            return None
        if self._secrets is None:
            raise InvalidInput(
                "THREADWORK_SECRET_KEY is not set, so header values cannot be stored."
            )
        return self._secrets.encrypt(json.dumps(dict(added.headers)))


async def _check_built_in(unit: Unit, handle: str, name: str) -> None:
    """Raises unless agent ``handle`` exists and is built in (tool servers are for those)."""
    agent = await unit.get_agent(handle)
    if agent is None:
        raise NotFound(f"There is no agent named `{name}`.")
    if not agent.built_in:
        raise InvalidInput(
            f"`{handle}` is an external agent: it brings its own tools. Tool servers are for "
            "built-in agents (claude, openai)."
        )
