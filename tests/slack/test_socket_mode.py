"""Socket Mode: the same app over a WebSocket, against the stand-in's Socket Mode server."""

from bot.root import Service
from tests.slack.conftest import ALICE, CHANNEL, ack_of
from tests.slack.standin import SlackStandIn


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
