"""The agents registry: who can be assigned work, their settings and their secrets."""

import hashlib
import secrets
from collections.abc import Callable

from bot.agents import Agent, AgentKind, AgentSettings, normalize_agent_name
from bot.clock import Clock
from bot.errors import InvalidInput, NotFound
from bot.ports import Store
from bot.secrets import SecretBox
from bot.task import Task

API_KEY = "api_key"


def new_token() -> str:
    """A fresh MCP bearer token: 256 random bits, recognisable by its prefix."""
    return "twk_" + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AgentRegistry:
    """Adds, lists and removes agents; stores API keys encrypted and MCP tokens hashed."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        secrets: SecretBox | None,
        new_token: Callable[[], str] = new_token,
    ) -> None:
        self._store = store
        self._clock = clock
        self._secrets = secrets
        self._new_token = new_token

    async def add_agent(
        self,
        name: str,
        kind: AgentKind = AgentKind.EXTERNAL,
        display_name: str | None = None,
        slack_user_id: str | None = None,
        slack_bot_id: str | None = None,
        settings: AgentSettings | None = None,
    ) -> Agent:
        """Registers ``name`` (or updates it in place, re-enabling it)."""
        handle = normalize_agent_name(name)
        async with self._store.transaction() as unit:
            return await unit.upsert_agent(
                handle,
                kind,
                (display_name or handle).strip(),
                slack_user_id,
                slack_bot_id,
                settings or AgentSettings(),
                self._clock(),
            )

    async def remove_agent(self, name: str) -> None:
        """Deletes the agent and its secrets; tasks keep its name in their history."""
        async with self._store.transaction() as unit:
            if not await unit.delete_agent(normalize_agent_name(name)):
                raise NotFound(f"There is no agent named `{name}`.")

    async def set_enabled(self, name: str, enabled: bool) -> list[Task]:
        """Enables or disables the agent; returns the tasks it holds a claim on. A disabled
        agent cannot be assigned, its MCP tokens are refused and the runtime does not run it;
        the claims it holds lapse as any silent agent's do."""
        handle = normalize_agent_name(name)
        async with self._store.transaction() as unit:
            if not await unit.set_agent_enabled(handle, enabled, self._clock()):
                raise NotFound(f"There is no agent named `{name}`.")
            return await unit.list_tasks_claimed_by(handle)

    async def list_agents(self) -> list[Agent]:
        async with self._store.read() as reader:
            return await reader.list_agents()

    async def get_agent(self, name: str) -> Agent | None:
        """The agent registered as ``name`` (a handle, any case, with or without ``@``)."""
        async with self._store.read() as reader:
            return await reader.get_agent(name.strip().lstrip("@").lower())

    async def find_by_slack_user(self, user_id: str) -> Agent | None:
        """The agent that is the Slack user ``user_id``, if one is registered."""
        async with self._store.read() as reader:
            return await reader.find_agent_by_slack_id(user_id, None)

    async def set_api_key(self, name: str, api_key: str) -> None:
        """Stores ``api_key`` for the agent, encrypted; the key is never logged or echoed."""
        if not api_key.strip():
            raise InvalidInput("The API key is empty.")
        if self._secrets is None:
            raise InvalidInput("THREADWORK_SECRET_KEY is not set, so keys cannot be stored.")
        ciphertext = self._secrets.encrypt(api_key.strip())
        async with self._store.transaction() as unit:
            handle = normalize_agent_name(name)
            if not await unit.set_agent_secret(handle, API_KEY, ciphertext, self._clock()):
                raise NotFound(f"There is no agent named `{name}`.")

    async def issue_token(self, name: str) -> str:
        """A new MCP token for the agent, returned once; only its hash is kept."""
        token = self._new_token()
        async with self._store.transaction() as unit:
            if not await unit.add_token(
                normalize_agent_name(name), token_hash(token), self._clock()
            ):
                raise NotFound(f"There is no agent named `{name}`.")
        return token

    async def revoke_tokens(self, name: str) -> int:
        """Revokes every MCP token of the agent; returns how many were live."""
        async with self._store.transaction() as unit:
            return await unit.revoke_tokens(normalize_agent_name(name), self._clock())

    async def agent_for_token(self, token: str) -> Agent | None:
        """The enabled agent a live token belongs to."""
        async with self._store.read() as reader:
            agent = await reader.find_agent_by_token_hash(token_hash(token))
        return agent if agent and agent.enabled else None

    async def get_api_key(self, name: str) -> str | None:
        """Decrypts the agent's API key for the runtime; None when none is stored."""
        async with self._store.read() as reader:
            ciphertext = await reader.get_agent_secret(normalize_agent_name(name), API_KEY)
        if ciphertext is None or self._secrets is None:
            return None
        return self._secrets.decrypt(ciphertext)
