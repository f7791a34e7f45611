"""Socket Mode's share of the front door: a malformed interaction is refused, acknowledged, and
changes nothing."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from bot.root import Service, open_service
from bot.status import TaskStatus
from bot.task import Actor, TaskRef
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


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "block_actions", "actions": [{"action_id": "task_cancel", "value": "C1#1"}]},
        {"type": "block_actions", "user": {"id": ALICE}, "actions": [{"action_id": "task_cancel"}]},
    ],
    ids=["no-user", "no-value"],
)
async def test_a_malformed_interaction_over_socket_mode_is_acknowledged_and_changes_nothing(
    socket_service: Service, standin: SlackStandIn, payload: dict[str, Any]
) -> None:
    board = socket_service.core.board
    task = await board.create_task(CHANNEL, "Stay open", Actor.user(ALICE))
    before = len(standin.calls)
    ack = await ack_of(
        standin,
        {
            "envelope_id": "env-bad",
            "type": "interactive",
            "accepts_response_payload": False,
            "payload": payload | {"channel": {"id": CHANNEL}},
        },
    )
    assert ack == {"envelope_id": "env-bad"}
    async with socket_service.core.store.read() as reader:
        current = await reader.get_task(TaskRef(CHANNEL, task.number))
    assert current is not None
    assert current.status == TaskStatus.TODO
    assert [c.method for c in standin.calls[before:]] == []
