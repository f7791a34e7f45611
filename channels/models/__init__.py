"""The model adapters: the core's model port (``bot.runtime.model``) on each provider's API.
``claude`` is Claude through the anthropic SDK, ``openai_compatible`` any OpenAI-compatible chat
endpoint over aiohttp, and ``factory`` gives each built-in agent the one its kind and settings
name (the anthropic SDK loading only when a Claude agent first runs)."""
