"""The agents registry: who can be assigned work, their settings and their secrets."""

from bot.agents import Agent, AgentKind, AgentSettings, normalize_agent_name
from bot.clock import Clock
from bot.errors import InvalidInput, NotFound
from bot.ports import Store
from bot.secrets import SecretBox

API_KEY = "api_key"


class AgentRegistry:
    """Adds, lists and removes agents; stores their API keys encrypted."""

    def __init__(self, store: Store, clock: Clock, secrets: SecretBox | None) -> None:
        self._store = store
        self._clock = clock
        self._secrets = secrets

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

    async def list_agents(self) -> list[Agent]:
        async with self._store.read() as reader:
            return await reader.list_agents()

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

    async def get_api_key(self, name: str) -> str | None:
        """Decrypts the agent's API key for the runtime; None when none is stored."""
        async with self._store.read() as reader:
            ciphertext = await reader.get_agent_secret(normalize_agent_name(name), API_KEY)
        if ciphertext is None or self._secrets is None:
            return None
        return self._secrets.decrypt(ciphertext)
