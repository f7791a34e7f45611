"""Agents: who can be assigned work, and their settings."""

import re
from dataclasses import dataclass, field
from enum import StrEnum

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


@dataclass(frozen=True)
class AgentSettings:
    """Per-agent runtime settings; secrets live apart from these."""

    model: str | None = None
    system_prompt: str | None = None


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


def normalize_agent_name(text: str) -> str:
    """Returns the canonical handle for ``text`` or raises InvalidInput saying what is allowed."""
    name = text.strip().lstrip("@").lower()
    if not _NAME.match(name):
        raise InvalidInput(
            f"`{text}` is not a valid agent name: use 1-63 lowercase letters, digits, '.', '_' "
            "or '-', starting with a letter or digit."
        )
    return name
