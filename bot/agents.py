"""Agents: who can be assigned work, and their settings."""

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.errors import InvalidInput

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class AgentKind(StrEnum):
    """How an agent runs."""

    #: Runs elsewhere: another Slack bot or user, or an MCP client.
    EXTERNAL = "external"
    #: Built in: Claude through the anthropic SDK.
    CLAUDE = "claude"
    #: Built in: any OpenAI-compatible chat endpoint with tools.
    OPENAI = "openai"
    #: Built in: a deterministic script and no model at all (``threadwork sandbox``'s demo).
    SCRIPTED = "scripted"


class Autonomy(StrEnum):
    """What a built-in agent does when it would rather ask than work."""

    #: State the most reasonable assumption, post it, and carry on.
    ASSUME = "assume"
    #: Wait for a person's reply in the thread (lease paused); assume after the lease TTL.
    WAIT = "wait"


@dataclass(frozen=True)
class AgentSettings:
    """Per-agent runtime settings; secrets live apart from these."""

    model: str | None = None
    system_prompt: str | None = None
    max_tokens: int | None = None
    autonomy: Autonomy = Autonomy.ASSUME
    #: For ``openai`` agents: the OpenAI-compatible endpoint (e.g. Ollama's /v1).
    base_url: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "model": self.model,
            "system_prompt": self.system_prompt,
            "max_tokens": self.max_tokens,
            "autonomy": self.autonomy.value,
            "base_url": self.base_url,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AgentSettings":
        return cls(
            model=data.get("model"),
            system_prompt=data.get("system_prompt"),
            max_tokens=data.get("max_tokens"),
            autonomy=Autonomy(data.get("autonomy") or Autonomy.ASSUME),
            base_url=data.get("base_url"),
        )


@dataclass(frozen=True)
class Agent:
    """A registered agent. ``api_key_configured`` is all any read path says about its key."""

    name: str
    kind: AgentKind
    display_name: str
    enabled: bool = True
    slack_user_id: str | None = None
    slack_bot_id: str | None = None
    settings: AgentSettings = field(default_factory=AgentSettings)
    api_key_configured: bool = False

    @property
    def built_in(self) -> bool:
        """True when threadwork's own runtime runs this agent."""
        return self.kind in (AgentKind.CLAUDE, AgentKind.OPENAI, AgentKind.SCRIPTED)


def normalize_agent_name(text: str) -> str:
    """Returns the canonical handle for ``text`` or raises InvalidInput saying what is allowed."""
    name = text.strip().lstrip("@").lower()
    if not _NAME.match(name):
        raise InvalidInput(
            f"`{text}` is not a valid agent name: use 1-63 lowercase letters, digits, '.', '_' "
            "or '-', starting with a letter or digit."
        )
    return name
