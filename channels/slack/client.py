"""The Slack Web API client threadwork uses, the settings it needs, and a cached auth check."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient

from bot.settings import Settings

#: How long a successful auth.test counts, so readiness probes do not hammer Slack.
AUTH_CHECK_SECONDS = 30.0


def missing_settings(settings: Settings, socket_mode: bool) -> list[str]:
    """The Slack variables this mode needs that are not set."""
    needed = {"SLACK_BOT_TOKEN": settings.slack_bot_token}
    if socket_mode:
        needed["SLACK_APP_TOKEN"] = settings.slack_app_token
    else:
        needed["SLACK_SIGNING_SECRET"] = settings.slack_signing_secret
    return [name for name, value in needed.items() if value is None or not value.get_secret_value()]


def web_client(settings: Settings) -> AsyncWebClient:
    """The Web API client. No SDK-level retries: the outbox retries durably and knows when a
    retry could post twice; listeners answer people within Slack's 3 seconds instead.

    Whoever builds it closes it with ``close_client``.
    """
    assert settings.slack_bot_token is not None
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=10,
        retry_handlers=[],
        # One pooled session: without it every call opens (and TLS-handshakes) a connection.
        session=aiohttp.ClientSession(),
    )


async def close_client(client: AsyncWebClient) -> None:
    """Closes the client's pooled session."""
    if client.session is not None:
        await client.session.close()


@dataclass
class AuthCheck:
    """Whether Slack answers auth.test, remembered for half a minute."""

    client: AsyncWebClient
    monotonic: Callable[[], float] = time.monotonic
    _checked: float = field(default=-AUTH_CHECK_SECONDS)

    async def __call__(self) -> bool:
        if self.monotonic() - self._checked < AUTH_CHECK_SECONDS:
            return True
        try:
            await self.client.auth_test()
        except Exception:
            return False
        self._checked = self.monotonic()
        return True

    def forget(self) -> None:
        """Makes the next check ask Slack again."""
        self._checked = -AUTH_CHECK_SECONDS
