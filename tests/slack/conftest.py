"""A running threadwork (real aiohttp server, Bolt app, database) wired to the Slack stand-in.

Requests are signed exactly as Slack signs them. The core runs on a FakeClock; the outbox is
delivered when a test calls ``deliver()``, so every effect is awaited, never slept for.
"""

import hashlib
import hmac
import itertools
import json
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from bot.app import build_web_app
from bot.core import Core, open_core
from bot.delivery import DeliverySettings
from bot.settings import Settings
from bot.task import Task, TaskRef
from channels.slack.runtime import SlackRuntime, build_slack_runtime
from scheduler.jobs import build_scheduler
from tests.conftest import FakeClock
from tests.slack.standin import TOKEN, SlackStandIn

SECRET = "test-signing-secret-0123456789"
ADMIN = "UADMIN01"
ALICE = "UALICE01"
AGENT_USER = "UCODER01"
CHANNEL = "C1"
FAST = DeliverySettings(channel_interval=0, backoff_base=1, backoff_cap=4, idle_poll=0.05)


def signed(body: str, timestamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    """The headers Slack sends: v0 HMAC-SHA256 of ``v0:timestamp:body``."""
    ts = str(timestamp if timestamp is not None else int(time.time()))
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


@dataclass
class Harness:
    standin: SlackStandIn
    core: Core
    runtime: SlackRuntime
    clock: FakeClock
    url: str
    http: aiohttp.ClientSession

    _events = itertools.count(1)

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
        body = urlencode(
            {
                "token": "x",
                "team_id": "T1",
                "channel_id": channel,
                "user_id": user,
                "command": command,
                "text": text,
                "trigger_id": "trigger-1",
                "response_url": "https://hooks.invalid/response",
            }
        )
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
            await self.runtime.services.supervisor.drain()
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
        body = urlencode({"payload": json.dumps(payload)})
        return await self.post(body, "application/x-www-form-urlencoded")

    async def prune_inbound_event_ids(self) -> int:
        return await self.runtime.gateway.prune_inbound_event_ids()

    async def deliver(self) -> None:
        await self.runtime.delivery.drain()

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
        THREADWORK_SECRET_KEY="test-secret-key",
        THREADWORK_LEASE_TTL=600,
        THREADWORK_MAX_DISPATCH_ATTEMPTS=2,
    )


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated SQLite database; the Slack surface is backend-neutral above the store."""
    path = tmp_path / "threadwork.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
async def standin() -> AsyncIterator[SlackStandIn]:
    fake = SlackStandIn(
        users={ADMIN: {"is_admin": False}, ALICE: {"is_admin": False, "name": "alice"}}
    )
    await fake.start()
    yield fake
    await fake.close()


async def start_service(
    database_url: str, standin: SlackStandIn, clock: FakeClock
) -> AsyncIterator[Harness]:
    settings = settings_for(database_url, standin.url)
    async with open_core(settings, clock) as core, aiohttp.ClientSession() as http:
        runtime = build_slack_runtime(
            settings,
            core.store,
            core.board,
            core.registry,
            clock,
            socket_mode=False,
            signal=core.signal,
            dispatch=FAST,
        )
        scheduler = build_scheduler(runtime.reconciler, 3600)
        runner = web.AppRunner(build_web_app(core, scheduler, runtime), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started above
        scheduler.start()
        try:
            yield Harness(standin, core, runtime, clock, f"http://127.0.0.1:{port}", http)
        finally:
            scheduler.shutdown(wait=False)
            await runtime.close()
            await runner.cleanup()


@pytest.fixture
async def service(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock
) -> AsyncIterator[Harness]:
    async for harness in start_service(sqlite_url, standin, clock):
        await harness.core.registry.add_agent(
            "coder", display_name="Coder", slack_user_id=AGENT_USER
        )
        yield harness
