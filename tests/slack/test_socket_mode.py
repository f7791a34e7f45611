"""Socket Mode: the same app over a WebSocket, against the stand-in's Socket Mode server."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from bot.root import Service, open_service
from tests.conftest import FakeClock
from tests.slack.conftest import ALICE, CHANNEL, overrides_for, settings_for
from tests.slack.standin import APP_TOKEN, SlackStandIn


@pytest.fixture
async def socket_service(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock
) -> AsyncIterator[Service]:
    settings = settings_for(sqlite_url, standin.url).model_copy(
        update={"slack_app_token": SecretStr(APP_TOKEN)}
    )
    async with open_service(settings, overrides_for(clock), socket_mode=True) as service:
        async with asyncio.timeout(10):
            await standin.socket_connected.wait()
        yield service


async def ack_of(standin: SlackStandIn, envelope: dict[str, Any]) -> dict[str, Any]:
    await standin.push(envelope)
    async with asyncio.timeout(10):
        return await standin.socket_acks.get()


async def test_a_slash_command_over_socket_mode_is_acknowledged_with_its_reply(
    socket_service: Service, standin: SlackStandIn
) -> None:
    core = socket_service.core
    payload = {
        "command": "/task",
        "text": "new Socket task",
        "user_id": ALICE,
        "channel_id": CHANNEL,
        "team_id": "T1",
        "trigger_id": "t1",
    }
    ack = await ack_of(
        standin,
        {
            "envelope_id": "env-1",
            "type": "slash_commands",
            "accepts_response_payload": True,
            "payload": payload,
        },
    )
    assert ack["envelope_id"] == "env-1"
    assert "Created *C1#1*" in ack["payload"]["text"]
    async with core.store.read() as reader:
        assert [t.title for t in await reader.list_tasks()] == ["Socket task"]


async def test_an_event_redelivered_over_socket_mode_is_processed_once(
    socket_service: Service, standin: SlackStandIn
) -> None:
    core = socket_service.core
    await core.registry.add_agent("coder", slack_user_id="UCODER01")
    root = standin.add_message(CHANNEL, ALICE, "Rotate the keys")
    note = standin.add_message(CHANNEL, ALICE, "<@UBOT> assign this to coder", thread_ts=root["ts"])
    event = {
        "type": "app_mention",
        "channel": CHANNEL,
        "user": ALICE,
        "text": note["text"],
        "ts": note["ts"],
        "thread_ts": root["ts"],
    }
    body = {
        "type": "event_callback",
        "team_id": "T1",
        "api_app_id": "A1",
        "event_id": "EvSOCK",
        "event": event,
        "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}],
    }
    for attempt in (0, 1):
        ack = await ack_of(
            standin,
            {
                "envelope_id": f"env-{attempt}",
                "type": "events_api",
                "retry_attempt": attempt,
                "retry_reason": "timeout" if attempt else "",
                "accepts_response_payload": False,
                "payload": body,
            },
        )
        assert ack["envelope_id"] == f"env-{attempt}"
    await socket_service.supervisor.drain()
    async with core.store.read() as reader:
        [task] = await reader.list_tasks()
    assert (task.assignee, task.lease_epoch, task.thread_ts) == ("coder", 1, root["ts"])
