"""The model clients behind the core's ``ModelClients`` port: Claude through the anthropic
SDK, and OpenAI-compatible endpoints over aiohttp.

The anthropic SDK takes about 1.5 s to import, so it loads in a thread the first time a Claude
agent runs: neither start-up (``threadwork sandbox`` answers in under 3 s) nor the event loop
waits for it. Its clients are shared per key and closed at shutdown.
"""

import asyncio
import importlib
from typing import TYPE_CHECKING

from bot.model_hosts import ANTHROPIC_API_URL
from bot.runtime.model import AgentModel
from channels.models.openai_compatible import OpenAICompatibleModel

if TYPE_CHECKING:
    import anthropic

MODEL_TIMEOUT_S = 300.0


class SdkModelClients:
    """Implements ModelClients with the anthropic SDK and aiohttp."""

    def __init__(self, anthropic_base_url: str | None, max_retries: int = 2) -> None:
        self._base_url = anthropic_base_url
        self._max_retries = max_retries
        self._clients: dict[str, anthropic.AsyncAnthropic] = {}

    @property
    def claude_url(self) -> str:
        return self._base_url or ANTHROPIC_API_URL

    async def claude(self, key: str, model: str, max_tokens: int) -> AgentModel:
        claude = await asyncio.to_thread(importlib.import_module, "channels.models.claude")
        built: AgentModel = claude.AnthropicModel(self._client(key), model, max_tokens)
        return built

    def openai_compatible(
        self, base_url: str, key: str | None, model: str, max_tokens: int
    ) -> AgentModel:
        return OpenAICompatibleModel(base_url, key, model, max_tokens)

    def _client(self, key: str) -> "anthropic.AsyncAnthropic":
        import anthropic  # loaded by ``claude`` already, off the event loop

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
