"""Claude through the anthropic SDK: streamed, with prompt caching on the stable prefix.

Three cache breakpoints (of the API's four): the last tool definition, the system prompt and the
last block of the conversation so far. In Anthropic's prefix order the tool definitions come
first, threadwork's own and then the agent's tool servers' in a fixed order, so they are written
to the cache once, on a run's first step, and read on every later one, however many servers an
agent has. Each step's request starts with the previous step's whole request, which the API
bills as a cache read, so the cost per step stays nearly flat as a thread grows.
"""

import copy
from typing import Any

import anthropic

from bot.runtime.model import (
    Message,
    ModelTurn,
    ModelUnavailable,
    Progress,
    TextDelta,
    ToolCall,
    ToolSpec,
)
from bot.work import Usage

EPHEMERAL = {"type": "ephemeral"}


def with_cache_breakpoints(messages: list[Message]) -> list[Message]:
    """A copy of ``messages`` whose last content block carries a cache breakpoint."""
    marked = copy.deepcopy(messages)
    if not marked:
        return marked
    last = marked[-1]
    if isinstance(last["content"], str):
        last["content"] = [{"type": "text", "text": last["content"]}]
    last["content"][-1]["cache_control"] = EPHEMERAL
    return marked


def tool_definitions(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """The tools in the API's shape, the last one carrying a cache breakpoint."""
    definitions: list[dict[str, Any]] = [
        {"name": t.name, "description": t.description, "input_schema": t.input_schema}
        for t in tools
    ]
    if definitions:
        definitions[-1]["cache_control"] = EPHEMERAL
    return definitions


class AnthropicModel:
    """Implements AgentModel on the Messages API (any base_url, e.g. a local stand-in)."""

    def __init__(self, client: anthropic.AsyncAnthropic, model: str, max_tokens: int) -> None:
        self._client = client
        self._model = model
        self._max_tokens = max_tokens

    async def complete(
        self,
        system: str,
        tools: list[ToolSpec],
        messages: list[Message],
        on_progress: Progress,
        on_text: TextDelta | None = None,
    ) -> ModelTurn:
        request: dict[str, Any] = {
            "model": self._model,
            "max_tokens": self._max_tokens,
            "system": [{"type": "text", "text": system, "cache_control": EPHEMERAL}],
            "tools": tool_definitions(tools),
            "messages": with_cache_breakpoints(messages),
        }
        try:
            async with self._client.messages.stream(**request) as stream:
                wrote = False
                async for event in stream:
                    await on_progress()
                    if on_text is not None:
                        wrote = await _relay_text(event, on_text, wrote)
                final = await stream.get_final_message()
        except anthropic.APIError as exc:
            raise ModelUnavailable(_describe(exc)) from exc
        return _turn(final)


async def _relay_text(event: Any, on_text: TextDelta, wrote: bool) -> bool:
    """Passes a text delta on (and a line break where a new text block follows earlier text,
    as ``_turn`` joins the blocks); returns whether any text was passed on so far."""
    if event.type == "content_block_start" and event.content_block.type == "text" and wrote:
        await on_text("\n")
    elif event.type == "text" and event.text:
        await on_text(event.text)
        return True
    return wrote


def _describe(exc: anthropic.APIError) -> str:
    if isinstance(exc, anthropic.APIStatusError):
        return f"{type(exc).__name__} ({exc.status_code})"
    return type(exc).__name__


def _turn(message: Any) -> ModelTurn:
    texts, calls, content = [], [], []
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
            content.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            calls.append(ToolCall(block.id, block.name, dict(block.input)))
            content.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
    u = message.usage
    usage = Usage(
        input_tokens=u.input_tokens or 0,
        output_tokens=u.output_tokens or 0,
        cache_read_tokens=u.cache_read_input_tokens or 0,
        cache_creation_tokens=u.cache_creation_input_tokens or 0,
    )
    return ModelTurn(
        "\n".join(texts).strip(), calls, message.stop_reason or "end_turn", usage, content
    )
