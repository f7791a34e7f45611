"""Builds each built-in agent's model client from its settings and (encrypted) key.

The anthropic SDK takes about 1.5 s to import, so it loads in a thread the first time a Claude
agent runs: neither start-up (``threadwork sandbox`` answers in under 3 s) nor the event loop
waits for it.
"""

import asyncio
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from bot.agents import Agent, AgentKind
from bot.errors import ConfigurationError
from bot.model_hosts import ANTHROPIC_API_URL, ModelHosts
from bot.registry import AgentRegistry
from bot.runtime.model import AgentModel
from channels.models.openai_compatible import OpenAICompatibleModel

if TYPE_CHECKING:
    import anthropic

DEFAULT_CLAUDE_MODEL = "claude-sonnet-4-6"
DEFAULT_MAX_TOKENS = 4096
MODEL_TIMEOUT_S = 300.0


def _endpoint(agent: Agent) -> tuple[AgentKind, str | None]:
    """Where the agent's requests (and its key) go."""
    return agent.kind, agent.settings.base_url


class ModelFactory:
    """Implements AgentModels: one model per agent; Anthropic clients are shared per key and
    closed at shutdown."""

    def __init__(
        self,
        registry: AgentRegistry,
        anthropic_api_key: str | None,
        anthropic_base_url: str | None,
        max_retries: int = 2,
        model_hosts: ModelHosts | None = None,
        scripts: Mapping[str, AgentModel] | None = None,
    ) -> None:
        self._registry = registry
        #: The models of ``scripted`` agents, by name (``threadwork sandbox``'s demo).
        self._scripts = dict(scripts or {})
        self._fallback_key = anthropic_api_key
        self._base_url = anthropic_base_url
        self._max_retries = max_retries
        self._hosts = model_hosts or ModelHosts()
        self._clients: dict[str, anthropic.AsyncAnthropic] = {}

    async def for_agent(self, agent: Agent) -> AgentModel:
        """The agent's model, from its settings and its stored key. A key is discarded whenever
        the agent's kind or base_url changes, so one read after ``agent`` was could belong to
        another endpoint: the agent is read again, and a change refuses the run."""
        key = await self._registry.get_api_key(agent.name)
        current = await self._registry.get_agent(agent.name)
        if current is None or _endpoint(current) != _endpoint(agent):
            raise ConfigurationError(
                f"`{agent.name}` was changed or removed as its run started; nothing was sent. "
                "Assign the task again to start it."
            )
        max_tokens = agent.settings.max_tokens or DEFAULT_MAX_TOKENS
        if agent.kind == AgentKind.SCRIPTED:
            return self._scripted(agent.name)
        if agent.kind == AgentKind.OPENAI:
            if not agent.settings.base_url:
                raise ConfigurationError(f"`{agent.name}` has no endpoint: set base_url=...")
            self._check_host(agent.name, agent.settings.base_url)
            model = agent.settings.model or "default"
            return OpenAICompatibleModel(agent.settings.base_url, key, model, max_tokens)
        self._check_host(agent.name, self._base_url or ANTHROPIC_API_URL)
        key = key or self._fallback_key
        if not key:
            raise ConfigurationError(
                f"`{agent.name}` has no API key: set one with `/task-admin agent key {agent.name}` "
                "or set ANTHROPIC_API_KEY."
            )
        claude = await asyncio.to_thread(importlib.import_module, "channels.models.claude")
        built: AgentModel = claude.AnthropicModel(
            self._client(key), agent.settings.model or DEFAULT_CLAUDE_MODEL, max_tokens
        )
        return built

    def _scripted(self, name: str) -> AgentModel:
        script = self._scripts.get(name)
        if script is None:
            raise ConfigurationError(
                f"`{name}` is a scripted agent, and only `threadwork sandbox` has a script (for "
                "its `demo`); nothing was run."
            )
        return script

    def _check_host(self, name: str, url: str) -> None:
        """Refuses an endpoint outside THREADWORK_MODEL_HOSTS, before any key is sent."""
        if not self._hosts.allows(url):
            raise ConfigurationError(self._hosts.refusal(name, url))

    def _client(self, key: str) -> "anthropic.AsyncAnthropic":
        import anthropic  # loaded by ``for_agent`` already, off the event loop

        if key not in self._clients:
            self._clients[key] = anthropic.AsyncAnthropic(
                api_key=key,
                base_url=self._base_url,
                max_retries=self._max_retries,
                timeout=MODEL_TIMEOUT_S,
            )
        return self._clients[key]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
