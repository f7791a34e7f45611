"""Which model a built-in agent's run gets, and whether it may have one at all.

The checks are the core's: the agent's stored key is read, and the agent read again (a key is
discarded whenever the agent's kind or base_url changes, so a key read after the agent could
belong to another endpoint: a change refuses the run); an endpoint outside
THREADWORK_MODEL_HOSTS is refused before any key is sent; an agent without a key or an endpoint
is refused with what to set. Only then are the model clients (``ModelClients``, the SDKs'
side, in ``channels.models``) asked for the model.
"""

from collections.abc import Mapping
from typing import Protocol

from bot.agents import Agent, AgentKind
from bot.errors import ConfigurationError
from bot.model_hosts import ModelHosts
from bot.registry import AgentRegistry
from bot.runtime.model import AgentModel

DEFAULT_CLAUDE_MODEL = "claude-sonnet-4-6"
DEFAULT_MAX_TOKENS = 4096


class ModelClients(Protocol):
    """Builds the model the core chose: the SDK and HTTP side (``channels.models``)."""

    @property
    def claude_url(self) -> str:
        """Where Claude's requests, and so its key, go."""
        ...

    async def claude(self, key: str, model: str, max_tokens: int) -> AgentModel:
        """Claude at the service's Anthropic endpoint, with ``key``."""
        ...

    def openai_compatible(
        self, base_url: str, key: str | None, model: str, max_tokens: int
    ) -> AgentModel:
        """An OpenAI-compatible chat completions endpoint at ``base_url``."""
        ...

    async def close(self) -> None:
        """Closes the clients kept between runs."""
        ...


def _endpoint(agent: Agent) -> tuple[AgentKind, str | None]:
    """Where the agent's requests (and its key) go."""
    return agent.kind, agent.settings.base_url


class ModelBook:
    """Implements AgentModels: each agent's model, once the agent may have it."""

    def __init__(
        self,
        registry: AgentRegistry,
        clients: ModelClients,
        anthropic_api_key: str | None,
        model_hosts: ModelHosts | None = None,
        scripts: Mapping[str, AgentModel] | None = None,
    ) -> None:
        self._registry = registry
        self._clients = clients
        #: The models of ``scripted`` agents, by name (``threadwork sandbox``'s demo).
        self._scripts = dict(scripts or {})
        self._fallback_key = anthropic_api_key
        self._hosts = model_hosts or ModelHosts()

    async def for_agent(self, agent: Agent) -> AgentModel:
        """The agent's model, from its settings and its stored key; ConfigurationError, with
        nothing sent, when the agent cannot have one."""
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
            return self._clients.openai_compatible(agent.settings.base_url, key, model, max_tokens)
        self._check_host(agent.name, self._clients.claude_url)
        key = key or self._fallback_key
        if not key:
            raise ConfigurationError(
                f"`{agent.name}` has no API key: set one with `/task-admin agent key {agent.name}` "
                "or set ANTHROPIC_API_KEY."
            )
        return await self._clients.claude(
            key, agent.settings.model or DEFAULT_CLAUDE_MODEL, max_tokens
        )

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

    async def close(self) -> None:
        await self._clients.close()
