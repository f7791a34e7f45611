"""Any OpenAI-compatible chat endpoint with tools (Ollama, vLLM, ...), over plain HTTP."""

import json
from typing import Any

import aiohttp

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

RETRIABLE = {408, 409, 429, 500, 502, 503, 504}


def to_openai(system: str, messages: list[Message]) -> list[dict[str, Any]]:
    """Anthropic-shaped messages (text, tool_use, tool_result blocks) in chat-completions shape."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        texts = [b["text"] for b in content if b["type"] == "text"]
        calls = [b for b in content if b["type"] == "tool_use"]
        results = [b for b in content if b["type"] == "tool_result"]
        if message["role"] == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) or None}
            if calls:
                entry["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c["input"])},
                    }
                    for c in calls
                ]
            out.append(entry)
            continue
        for result in results:
            out.append(
                {"role": "tool", "tool_call_id": result["tool_use_id"], "content": _text(result)}
            )
        if texts:
            out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _text(result: dict[str, Any]) -> str:
    content = result.get("content")
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content)
    return str(content or "")


class OpenAICompatibleModel:
    """Implements AgentModel on POST {base_url}/chat/completions."""

    def __init__(
        self, base_url: str, api_key: str | None, model: str, max_tokens: int, attempts: int = 3
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._max_tokens = max_tokens
        self._attempts = attempts

    async def complete(
        self,
        system: str,
        tools: list[ToolSpec],
        messages: list[Message],
        on_progress: Progress,
        on_text: TextDelta | None = None,
    ) -> ModelTurn:
        """One step over plain HTTP, not streamed: ``on_text`` gets the turn's text once."""
        turn = await self._post(self._body(system, tools, messages), on_progress)
        if on_text is not None and turn.text:
            await on_text(turn.text)
        return turn

    def _body(self, system: str, tools: list[ToolSpec], messages: list[Message]) -> dict[str, Any]:
        return {
            "model": self._model,
            "max_tokens": self._max_tokens,
            "messages": to_openai(system, messages),
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.input_schema,
                    },
                }
                for t in tools
            ],
        }

    async def _post(self, body: dict[str, Any], on_progress: Progress) -> ModelTurn:
        """Posts ``body``, retrying what the endpoint says may succeed later."""
        async with aiohttp.ClientSession(headers=self._headers) as http:
            for attempt in range(1, self._attempts + 1):
                await on_progress()
                try:
                    async with http.post(self._url, json=body) as response:
                        if response.status in RETRIABLE and attempt < self._attempts:
                            continue
                        if response.status != 200:
                            raise ModelUnavailable(
                                f"HTTP {response.status} from the model endpoint"
                            )
                        return _turn(await response.json())
                except aiohttp.ClientError as exc:
                    if attempt == self._attempts:
                        raise ModelUnavailable(type(exc).__name__) from exc
        raise ModelUnavailable("the model endpoint kept failing")


def _turn(data: dict[str, Any]) -> ModelTurn:
    choice = data["choices"][0]
    message = choice["message"]
    text = (message.get("content") or "").strip()
    calls = [
        ToolCall(c["id"], c["function"]["name"], json.loads(c["function"].get("arguments") or "{}"))
        for c in message.get("tool_calls") or []
    ]
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in calls]
    usage = data.get("usage") or {}
    stop = "tool_use" if calls else "end_turn"
    return ModelTurn(
        text,
        calls,
        stop,
        Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
        content,
    )
