"""The model port: one step of a conversation, with tools, whatever the provider."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.agents import Agent
from bot.work import Usage

#: Messages in Anthropic's shape: {"role": "user"|"assistant", "content": str | list[block]}.
Message = dict[str, Any]
Progress = Callable[[], Awaitable[None]]
#: Receives the model's words for people as they are generated, a piece at a time.
TextDelta = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class ModelTurn:
    """What the model said in one step."""

    text: str
    tool_calls: list[ToolCall]
    stop_reason: str
    usage: Usage
    #: The assistant message to append to the conversation, in Anthropic's block shape.
    content: list[dict[str, Any]] = field(default_factory=list)


class ModelUnavailable(Exception):
    """The provider failed after the SDK's own retries; the step is lost, the lease will lapse."""


class AgentModel(Protocol):
    async def complete(
        self,
        system: str,
        tools: list[ToolSpec],
        messages: list[Message],
        on_progress: Progress,
        on_text: TextDelta | None = None,
    ) -> ModelTurn:
        """One model step; ``on_progress`` is awaited as output streams in (liveness), and
        ``on_text`` with each piece of the turn's text as it is generated (a provider that does
        not stream passes the whole text once). The pieces, joined, are the turn's ``text``
        before it is stripped."""
        ...


class AgentModels(Protocol):
    """Gives each built-in agent its model (``bot.runtime.models``, in production)."""

    async def for_agent(self, agent: Agent) -> AgentModel:
        """The model that ``agent``'s settings and stored key name; raises ConfigurationError
        (before anything is sent) when the agent cannot have one."""
        ...
