"""The Slack Web API client threadwork uses, the settings it needs, and a cached auth check."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from bot.metrics import Metrics, NoMetrics
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


class RateLimitCounter(AsyncRetryHandler):
    """Counts every 429 Slack answers, by API method, and never asks the SDK to retry.

    The SDK shows each response to its retry handlers; this one only looks.
    """

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(max_retry_count=1)  # 0 would keep the SDK from asking it at all
        self._metrics = metrics

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is not None and response.status_code == 429:
            self._metrics.slack_rate_limited(api_method(request.url))
        return False


def api_method(url: str) -> str:
    """The Web API method a request URL calls: ``.../api/chat.postMessage`` -> its last part."""
    return urlsplit(url).path.rstrip("/").rpartition("/")[2] or "unknown"


def web_client(settings: Settings, metrics: Metrics | None = None) -> AsyncWebClient:
    """The Web API client, counting Slack's 429s in ``metrics``. No SDK-level retries: the
    outbox retries durably and knows when a retry could post twice; listeners answer people
    within Slack's 3 seconds instead.

    Whoever builds it closes it with ``close_client``.
    """
    assert settings.slack_bot_token is not None
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=10,
        retry_handlers=[RateLimitCounter(metrics or NoMetrics())],
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
