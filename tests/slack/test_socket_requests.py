"""Socket Mode's share of the front door: a malformed interaction is refused, acknowledged, and
changes nothing."""

from typing import Any

import pytest

from bot.root import Service
from bot.status import TaskStatus
from bot.task import Actor, TaskRef
from tests.slack.conftest import ALICE, CHANNEL, ack_of
from tests.slack.standin import SlackStandIn


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
