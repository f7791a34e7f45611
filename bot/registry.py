"""The agents registry: who can be assigned work, their settings and their secrets."""

import dataclasses
import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from bot.agents import Agent, AgentKind, AgentSettings, normalize_agent_name
from bot.clock import Clock
from bot.errors import ConfigurationError, InvalidInput, NotFound
from bot.model_hosts import ModelHosts
from bot.ports import Store, Unit
from bot.secrets import SecretBox
from bot.signal import Notify, Queued, ignore
from bot.task import Task
from bot.tool_server_book import DEFAULT_MAX_TOOL_SERVERS, ToolServerBook
from bot.tool_server_policy import ToolServerPolicy

API_KEY = "api_key"


def new_token() -> str:
    """A fresh MCP bearer token: 256 random bits, recognisable by its prefix."""
    return "twk_" + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Registration:
    """An agent as registered, and whether registering it discarded its stored key."""

    agent: Agent
    #: Its kind or endpoint changed, so the key stored for the old one was deleted: a key is
    #: only ever sent where it was set for.
    key_discarded: bool = False


@dataclass(frozen=True)
class SecretsReport:
    """How many agent secrets are stored, and how many the configured keys open."""

    stored: int
    readable: int


@dataclass(frozen=True)
class Rotation:
    """What ``rotate_secrets`` did: re-encrypted rows, and rows changed meanwhile (left)."""

    rotated: int
    changed: int


def _moves_key(before: Agent | None, kind: AgentKind, settings: AgentSettings) -> bool:
    """Whether re-registering ``before`` so would send its key somewhere else."""
    return before is not None and (
        before.kind != kind or before.settings.base_url != settings.base_url
    )


class AgentRegistry:
    """Adds, lists and removes agents; stores API keys encrypted and MCP tokens hashed."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        secrets: SecretBox | None,
        new_token: Callable[[], str] = new_token,
        model_hosts: ModelHosts | None = None,
        notify: Notify = ignore,
        max_tool_servers: int = DEFAULT_MAX_TOOL_SERVERS,
        tool_server_policy: ToolServerPolicy | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._secrets = secrets
        self._new_token = new_token
        self._hosts = model_hosts or ModelHosts()
        self._notify = notify
        self._tool_servers = ToolServerBook(
            store, clock, secrets, max_tool_servers, tool_server_policy
        )

    @property
    def tool_servers(self) -> ToolServerBook:
        """The built-in agents' MCP tool servers."""
        return self._tool_servers

    @asynccontextmanager
    async def _changing(self) -> AsyncIterator[Unit]:
        """A transaction that changes agents: once it commits, whoever keeps agents between
        reads (outbox delivery, in every replica) is told to read them again."""
        async with self._store.transaction() as unit:
            unit.queued.add(Queued.DIRECTORY)
            yield unit
        self._notify(frozenset(unit.queued))

    async def add_agent(
        self,
        name: str,
        kind: AgentKind = AgentKind.EXTERNAL,
        display_name: str | None = None,
        slack_user_id: str | None = None,
        slack_bot_id: str | None = None,
        settings: AgentSettings | None = None,
    ) -> Agent:
        """Registers ``name`` (or updates it in place); see :meth:`register_agent`."""
        registration = await self.register_agent(
            name, kind, display_name, slack_user_id, slack_bot_id, settings
        )
        return registration.agent

    async def register_agent(
        self,
        name: str,
        kind: AgentKind = AgentKind.EXTERNAL,
        display_name: str | None = None,
        slack_user_id: str | None = None,
        slack_bot_id: str | None = None,
        settings: AgentSettings | None = None,
    ) -> Registration:
        """Registers ``name``, or updates it in place: a disabled agent stays disabled, and a
        change of kind or ``base_url`` deletes its stored key (in the same transaction)."""
        handle = normalize_agent_name(name)
        settings = settings or AgentSettings()
        self._check_endpoint(handle, kind, settings)
        async with self._changing() as unit:
            before = await unit.get_agent(handle)
            discarded = _moves_key(before, kind, settings) and await unit.delete_agent_secret(
                handle, API_KEY
            )
            agent = await unit.upsert_agent(
                handle,
                kind,
                (display_name or handle).strip(),
                slack_user_id,
                slack_bot_id,
                settings,
                self._clock(),
            )
            ciphertext = await unit.get_agent_secret(handle, API_KEY)
        return Registration(self._key_state(agent, ciphertext), discarded)

    def _check_endpoint(self, name: str, kind: AgentKind, settings: AgentSettings) -> None:
        url = settings.base_url
        if url is None or kind == AgentKind.EXTERNAL:
            return
        if not url.startswith(("http://", "https://")):
            raise InvalidInput("base_url must be an http(s) URL.")
        if "@" in urlsplit(url).netloc:
            raise InvalidInput(
                "base_url must not carry credentials; store the key with `/task-admin agent key`."
            )
        if not self._hosts.allows(url):
            raise InvalidInput(self._hosts.refusal(name, url))

    async def remove_agent(self, name: str) -> None:
        """Deletes the agent and its secrets; tasks keep its name in their history."""
        async with self._changing() as unit:
            if not await unit.delete_agent(normalize_agent_name(name)):
                raise NotFound(f"There is no agent named `{name}`.")

    async def set_enabled(self, name: str, enabled: bool) -> list[Task]:
        """Enables or disables the agent; returns the tasks it holds a claim on. Disabling
        revokes its MCP tokens (enabling it again does not bring them back), and a disabled
        agent cannot be assigned and the runtime does not run it; the claims it holds lapse as
        any silent agent's do."""
        handle = normalize_agent_name(name)
        async with self._changing() as unit:
            if not await unit.set_agent_enabled(handle, enabled, self._clock()):
                raise NotFound(f"There is no agent named `{name}`.")
            if not enabled:
                await unit.revoke_tokens(handle, self._clock())
            return await unit.list_tasks_claimed_by(handle)

    async def list_agents(self) -> list[Agent]:
        """Every agent, by name; a key counts as configured only when it can be decrypted."""
        async with self._store.read() as reader:
            agents = await reader.list_agents()
            stored = await reader.list_agent_secrets()
        keys = {s.agent: s.ciphertext for s in stored if s.name == API_KEY}
        return [self._key_state(agent, keys.get(agent.name)) for agent in agents]

    async def list_agents_as_stored(self) -> list[Agent]:
        """Every agent, by name, without opening any stored key: for the runner's claim passes
        and the reconcile's probe, which need who the agents are, on every pass."""
        async with self._store.read() as reader:
            return await reader.list_agents()

    async def get_agent(self, name: str) -> Agent | None:
        """The agent registered as ``name`` (a handle, any case, with or without ``@``)."""
        async with self._store.read() as reader:
            handle = name.strip().lstrip("@").lower()
            agent = await reader.get_agent(handle)
            ciphertext = await reader.get_agent_secret(handle, API_KEY) if agent else None
        return self._key_state(agent, ciphertext) if agent else None

    def _key_state(self, agent: Agent, ciphertext: bytes | None) -> Agent:
        """``agent`` saying its key is configured only when a configured key opens it."""
        box = self._secrets
        usable = ciphertext is not None and box is not None and box.can_decrypt(ciphertext)
        if agent.api_key_configured == usable:
            return agent
        return dataclasses.replace(agent, api_key_configured=usable)

    async def is_agent(self, chat_id: str) -> bool:
        """Whether ``chat_id`` is a registered agent's Slack user or bot id (``AgentIdentities``)."""
        async with self._store.read() as reader:
            return await reader.find_agent_by_slack_id(chat_id, chat_id) is not None

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
        async with self._changing() as unit:
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

    async def secrets_report(self) -> SecretsReport:
        """How many agent secrets are stored and how many the configured keys can open."""
        async with self._store.read() as reader:
            stored = await reader.list_agent_secrets()
        box = self._secrets
        readable = sum(1 for s in stored if box is not None and box.can_decrypt(s.ciphertext))
        return SecretsReport(stored=len(stored), readable=readable)

    async def rotate_secrets(self) -> Rotation:
        """Re-encrypts every stored secret under THREADWORK_SECRET_KEY, in one transaction.

        Refuses, changing nothing, when a secret opens under none of the configured keys. A row
        replaced meanwhile (a key set during the rotation) is left as it is: it is already
        under the current key.
        """
        box = self._secrets
        if box is None:
            raise ConfigurationError(
                "THREADWORK_SECRET_KEY is not set: there is no key to rotate to."
            )
        async with self._store.transaction() as unit:
            stored = await unit.list_agent_secrets()
            unreadable = [s for s in stored if not box.can_decrypt(s.ciphertext)]
            if unreadable:
                raise ConfigurationError(
                    f"{len(unreadable)} stored secret(s) open under neither "
                    "THREADWORK_SECRET_KEY nor THREADWORK_SECRET_KEY_PREVIOUS; nothing was "
                    "rotated."
                )
            rotated = 0
            for secret in stored:
                new = box.rotate(secret.ciphertext)
                at = self._clock()
                if await unit.rewrite_agent_secret(
                    secret.agent, secret.name, secret.ciphertext, new, at
                ):
                    rotated += 1
        return Rotation(rotated=rotated, changed=len(stored) - rotated)
