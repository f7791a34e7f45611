"""Registered agents, their encrypted secrets, their tokens and their MCP tool servers."""

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from bot.agents import Agent, AgentKind, AgentSettings
from bot.tool_servers import Stored, ToolServer


@dataclass(frozen=True)
class StoredSecret:
    """One encrypted secret of an agent, as stored; its repr shows no ciphertext."""

    agent: str
    name: str
    ciphertext: bytes = field(repr=False)


class AgentReads(Protocol):
    """Registered agents, their encrypted secrets and their tokens."""

    async def get_agent(self, name: str) -> Agent | None: ...

    async def list_agents(self) -> list[Agent]: ...

    async def find_agent_by_slack_id(self, user_id: str | None, bot_id: str | None) -> Agent | None:
        """The agent whose Slack user id or bot id matches, if any."""
        ...

    async def find_agents_by_slack_ids(
        self, user_ids: Collection[str], bot_ids: Collection[str]
    ) -> list[Agent]:
        """Every agent whose Slack user id or bot id is among those given."""
        ...

    async def get_agent_secret(self, name: str, secret: str) -> bytes | None: ...

    async def list_agent_secrets(self) -> list[StoredSecret]:
        """Every stored (encrypted) agent secret, by agent name and secret name."""
        ...

    async def find_agent_by_token_hash(self, token_hash: str) -> Agent | None: ...


class AgentWrites(Protocol):
    """Registering agents, their secrets and their MCP tokens."""

    async def upsert_agent(
        self,
        name: str,
        kind: AgentKind,
        display_name: str,
        slack_user_id: str | None,
        slack_bot_id: str | None,
        settings: AgentSettings,
        at: datetime,
    ) -> Agent: ...

    async def set_agent_enabled(self, name: str, enabled: bool, at: datetime) -> bool: ...

    async def delete_agent(self, name: str) -> bool: ...

    async def set_agent_secret(
        self, name: str, secret: str, ciphertext: bytes, at: datetime
    ) -> bool: ...

    async def rewrite_agent_secret(
        self, name: str, secret: str, expected: bytes, ciphertext: bytes, at: datetime
    ) -> bool:
        """Replaces the secret's ciphertext only while it is still ``expected``."""
        ...

    async def delete_agent_secret(self, name: str, secret: str) -> bool:
        """Deletes one secret of the agent; False when there was none."""
        ...

    async def add_token(self, agent: str, token_hash: str, at: datetime) -> bool: ...

    async def revoke_tokens(self, agent: str, at: datetime) -> int: ...


class ToolServerReads(Protocol):
    """The MCP tool servers of built-in agents."""

    async def list_tool_servers(self, agent: str) -> list[ToolServer]:
        """The agent's tool servers, by label."""
        ...


class ToolServerWrites(Protocol):
    """Adding and removing built-in agents' tool servers."""

    async def upsert_tool_server(
        self, agent: str, server: ToolServer, at: datetime
    ) -> Stored | None:
        """Stores ``server`` under its label (replacing one of the same label), and says which
        it did; None when there is no agent ``agent``. Locks the agent first, until the
        transaction ends, so adds to one agent take turns: what it says, and the book's count
        after it, hold every add committed before."""
        ...

    async def delete_tool_server(self, agent: str, label: str) -> bool:
        """Deletes the agent's server ``label``; False when it had none of that label."""
        ...
