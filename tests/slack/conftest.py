"""A running threadwork (real aiohttp server, Bolt app, database) wired to the Slack stand-in.

Requests are signed exactly as Slack signs them. The core runs on a FakeClock; the outbox is
delivered when a test calls ``deliver()``, so every effect is awaited, never slept for.
"""

import asyncio
import hashlib
import hmac
import itertools
import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import SecretStr

from bot.delivery import DeliverySettings
from bot.root import Core, Overrides, Service, Slack, open_service
from bot.settings import Settings
from bot.supervisor import Supervisor
from bot.task import Task, TaskRef
from tests.agents.standins import AnthropicStandIn
from tests.conftest import TEST_SECRET_KEY, FakeClock
from tests.slack.standin import APP_TOKEN, TOKEN, SlackStandIn

SECRET = "test-signing-secret-0123456789"
ADMIN = "UADMIN01"
ALICE = "UALICE01"
AGENT_USER = "UCODER01"
CHANNEL = "C1"
FAST = DeliverySettings(
    channel_posts=None, workspace_updates=None, backoff_base=1, backoff_cap=4, idle_poll=0.05
)


def slash_command(text: str, command: str, user: str, channel: str, n: int) -> str:
    """A slash command's form body as Slack sends it; ``n`` makes its response_url unique, as
    Slack's is (the gateway runs a signed request once)."""
    return urlencode(
        {
            "token": "x",
            "team_id": "T1",
            "channel_id": channel,
            "user_id": user,
            "command": command,
            "text": text,
            "trigger_id": "trigger-1",
            "response_url": f"https://hooks.invalid/response/{n}",
        }
    )


def signed(body: str, timestamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    """The headers Slack sends: v0 HMAC-SHA256 of ``v0:timestamp:body``."""
    ts = str(timestamp if timestamp is not None else int(time.time()))
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


@dataclass
class Harness:
    standin: SlackStandIn
    service: Service
    clock: FakeClock
    http: aiohttp.ClientSession
    stack: AsyncExitStack

    @property
    def core(self) -> Core:
        return self.service.core

    @property
    def slack(self) -> Slack:
        assert self.service.slack is not None
        return self.service.slack

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def supervisor(self) -> Supervisor:
        return self.service.supervisor

    async def close(self) -> None:
        """Shuts the service down as SIGTERM would (the fixture's own exit is then a no-op)."""
        await self.stack.aclose()

    @asynccontextmanager
    async def mcp_as(self, agent: str) -> AsyncIterator[Client]:
        """The real MCP client on the service's endpoint, with a fresh token of ``agent``'s."""
        token = await self.core.registry.issue_token(agent)
        assert self.service.mcp_url is not None
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(streamable_http_client(self.service.mcp_url, http_client=http)) as client,
        ):
            yield client

    _events = itertools.count(1)
    _requests = itertools.count(1)

    async def post(
        self, body: str, content_type: str, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        all_headers = {"Content-Type": content_type} | (
            headers if headers is not None else signed(body)
        )
        async with self.http.post(
            self.url + "/slack/events", data=body, headers=all_headers
        ) as response:
            await response.read()
            return response

    async def command(
        self, text: str, command: str = "/task", user: str = ALICE, channel: str = CHANNEL
    ) -> str:
        """Runs a slash command; returns the ephemeral reply's text."""
        body = slash_command(text, command, user, channel, next(self._requests))
        async with self.http.post(
            self.url + "/slack/events",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"} | signed(body),
        ) as response:
            assert response.status == 200, await response.text()
            reply = await response.json()
        assert reply.get("response_type", "ephemeral") == "ephemeral"
        return str(reply["text"])

    async def event(
        self,
        event: dict[str, Any],
        event_id: str | None = None,
        retry: int | None = None,
        settle: bool = True,
    ) -> int:
        """Delivers an Events API callback; returns the HTTP status. With ``settle``, also
        waits for the work that runs after the ack."""
        body = json.dumps(
            {
                "token": "x",
                "team_id": "T1",
                "api_app_id": "A1",
                "type": "event_callback",
                "event_id": event_id or f"Ev{next(self._events):06d}",
                "event_time": int(time.time()),
                "event": event,
                "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}],
            }
        )
        headers = signed(body) | (
            {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
            if retry
            else {}
        )
        response = await self.post(body, "application/json", headers)
        if settle:
            await self.service.supervisor.drain()
        return response.status

    async def thread_message(
        self,
        user: str,
        text: str,
        thread_ts: str,
        bot_id: str | None = None,
        event_id: str | None = None,
        settle: bool = True,
    ) -> dict[str, Any]:
        """A reply that Slack both stores and announces as a message event."""
        message = self.standin.add_message(CHANNEL, user, text, thread_ts=thread_ts, bot_id=bot_id)
        event = {"type": "message", "channel": CHANNEL, "channel_type": "channel"} | message
        assert await self.event(event, event_id=event_id, settle=settle) == 200
        return message

    async def interact(self, payload: dict[str, Any]) -> aiohttp.ClientResponse:
        # Slack's payloads differ per click (response_url, action_ts); the gateway runs each
        # signed request once, so two identical clicks within a second must differ here too.
        unique = {"response_url": f"https://hooks.invalid/response/{next(self._requests)}"}
        body = urlencode({"payload": json.dumps(unique | payload)})
        return await self.post(body, "application/x-www-form-urlencoded")

    async def prune_inbound_event_ids(self) -> int:
        return await self.slack.gateway.prune_inbound_event_ids()

    async def deliver(self) -> None:
        await self.slack.delivery.drain()

    async def task(self, number: int, channel: str = CHANNEL) -> Task:
        async with self.core.store.read() as reader:
            task = await reader.get_task(TaskRef(channel, number))
        assert task is not None
        return task


def settings_for(database_url: str, slack_url: str) -> Settings:
    return Settings(
        DATABASE_URL=database_url,
        SLACK_BOT_TOKEN=TOKEN,
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack_url,
        THREADWORK_ADMINS=ADMIN,
        THREADWORK_SECRET_KEY=TEST_SECRET_KEY,
        THREADWORK_LEASE_TTL=600,
        THREADWORK_MAX_DISPATCH_ATTEMPTS=2,
        THREADWORK_RECONCILE_INTERVAL=3600,
    )


def overrides_for(clock: FakeClock) -> Overrides:
    """The service on a fixed clock, any free port, with delivery and the runner driven by
    the test (``deliver()``, ``run_once()``), never by their loops."""
    return Overrides(clock=clock, delivery=FAST, port=0, worker="test-worker", run_loops=False)


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated SQLite database; the Slack surface is backend-neutral above the store."""
    path = tmp_path / "threadwork.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


#: The people of the test workspace; every one is a member of the public channels C1 and C2.
PEOPLE = {ADMIN, ALICE, AGENT_USER, "UBOB0001", "UBOSS001", "UGHOST01", "UREVIEW1", "UNEW0001"}


@pytest.fixture
async def standin() -> AsyncIterator[SlackStandIn]:
    fake = SlackStandIn(
        users={ADMIN: {"is_admin": False}, ALICE: {"is_admin": False, "name": "alice"}},
        members={"C1": set(PEOPLE), "C2": set(PEOPLE)},
    )
    await fake.start()
    yield fake
    await fake.close()


async def start_service(
    database_url: str, standin: SlackStandIn, clock: FakeClock, **settings: object
) -> AsyncIterator[Harness]:
    """The whole service as ``serve`` builds it; ``settings`` override fields of Settings."""
    config = settings_for(database_url, standin.url).model_copy(update=settings)
    async with aiohttp.ClientSession() as http, AsyncExitStack() as stack:
        service = await stack.enter_async_context(open_service(config, overrides_for(clock)))
        yield Harness(standin, service, clock, http, stack)


@pytest.fixture
async def service(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock
) -> AsyncIterator[Harness]:
    async for harness in start_service(sqlite_url, standin, clock):
        await harness.core.registry.add_agent(
            "coder", display_name="Coder", slack_user_id=AGENT_USER
        )
        yield harness


@pytest.fixture
async def socket_service(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock
) -> AsyncIterator[Service]:
    """The service taking Slack's requests over Socket Mode from the stand-in."""
    settings = settings_for(sqlite_url, standin.url).model_copy(
        update={"slack_app_token": SecretStr(APP_TOKEN)}
    )
    async with open_service(settings, overrides_for(clock), socket_mode=True) as service:
        async with asyncio.timeout(10):
            await standin.socket_connected.wait()
        yield service


async def ack_of(standin: SlackStandIn, envelope: dict[str, Any]) -> dict[str, Any]:
    """Pushes an envelope over the socket and returns the service's acknowledgement."""
    await standin.push(envelope)
    async with asyncio.timeout(10):
        return await standin.socket_acks.get()


@pytest.fixture
async def anthropic() -> AsyncIterator[AnthropicStandIn]:
    """The local Anthropic Messages API stand-in."""
    standin = AnthropicStandIn()
    await standin.start()
    yield standin
    await standin.close()
