"""The HTTP front door: signatures, malformed bodies, Slack's handshake, health and readiness."""

import json
import re
import time
from urllib.parse import urlencode

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.slack.conftest import ADMIN, Harness, signed


def command_body(text: str) -> str:
    return urlencode(
        {
            "command": "/task",
            "text": text,
            "user_id": "UALICE01",
            "channel_id": "C1",
            "team_id": "T1",
        }
    )


async def tasks_in_db(service: Harness) -> int:
    async with service.core.store.read() as reader:
        return len(await reader.list_tasks())


@pytest.mark.parametrize(
    "headers",
    [
        signed(command_body("new Sneaky"), secret="not-the-secret"),
        signed(command_body("new Sneaky"), timestamp=int(time.time()) - 6 * 60),
        {"X-Slack-Request-Timestamp": str(int(time.time()))},
        {},
    ],
    ids=["wrong-secret", "stale-timestamp", "no-signature", "no-headers"],
)
async def test_a_request_not_signed_by_slack_gets_401_and_stores_nothing(
    service: Harness, headers: dict[str, str]
) -> None:
    response = await service.post(
        command_body("new Sneaky"), "application/x-www-form-urlencoded", headers
    )
    assert response.status == 401
    assert await tasks_in_db(service) == 0
    assert service.standin.calls_to("chat.postMessage") == []


async def test_a_body_altered_after_signing_gets_401(service: Harness) -> None:
    headers = signed(command_body("new Honest"))
    response = await service.post(
        command_body("new Altered"), "application/x-www-form-urlencoded", headers
    )
    assert response.status == 401
    assert await tasks_in_db(service) == 0


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("{not json", "application/json"),
        ("[1, 2]", "application/json"),
        ('{"no": "type"}', "application/json"),
        ("payload=%7Bbroken", "application/x-www-form-urlencoded"),
        ("hello=world", "application/x-www-form-urlencoded"),
    ],
    ids=["broken-json", "json-list", "json-without-type", "broken-payload", "unknown-form"],
)
async def test_a_signed_but_malformed_body_gets_400(
    service: Harness, body: str, content_type: str
) -> None:
    response = await service.post(body, content_type)
    assert response.status == 400
    assert await tasks_in_db(service) == 0


async def test_slacks_url_verification_handshake_is_answered(service: Harness) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "x"})
    async with service.http.post(
        service.url + "/slack/events",
        data=body,
        headers={"Content-Type": "application/json"} | signed(body),
    ) as response:
        assert response.status == 200
        assert (await response.json())["challenge"] == "abc123"


async def test_health_and_readiness_report_each_check(service: Harness) -> None:
    async with service.http.get(service.url + "/healthz") as response:
        assert response.status == 200
    async with service.http.get(service.url + "/readyz") as response:
        assert response.status == 200
        assert (await response.json())["checks"] == {
            "database": True,
            "scheduler": True,
            "slack": True,
        }


async def test_readiness_fails_while_slack_does_not_answer_auth_test(service: Harness) -> None:
    service.slack.auth.forget()  # forget the cached answer
    service.standin.fail("auth.test", 500)
    async with service.http.get(service.url + "/readyz") as response:
        assert response.status == 503
        assert (await response.json())["checks"]["slack"] is False


async def test_event_ids_are_remembered_for_a_day_then_forgotten(service: Harness) -> None:
    event = {"type": "app_home_opened", "user": "UALICE01", "tab": "messages", "channel": "D1"}
    assert await service.event(event, event_id="EvOLD") == 200
    service.clock.advance(3600)
    assert await service.prune_inbound_event_ids() == 0
    service.clock.advance(24 * 3600)
    assert await service.prune_inbound_event_ids() == 1


async def test_a_task_number_too_large_for_the_database_gets_a_readable_reply(
    service: Harness,
) -> None:
    await service.command("new Real task")
    for sub in ("show", "log", "cancel"):
        reply = await service.command(f"{sub} 99999999999999999999999")
        assert "is not a task number: tasks are numbered 1 to 2147483647" in reply
        assert f"Usage: `/task {sub} <N>`" in reply
    assert (await service.task(1)).status.value == "todo"


@pytest.mark.parametrize("channel", [12345, ["C1"], {"id": 7}], ids=["number", "list", "dict"])
async def test_a_signed_message_event_whose_channel_is_not_a_string_changes_nothing(
    service: Harness, channel: object
) -> None:
    await service.command("new Real task")
    await service.deliver()
    event = {
        "type": "message",
        "channel": channel,
        "user": "UALICE01",
        "text": "hello",
        "ts": "1700000001.000100",
        "thread_ts": (await service.task(1)).thread_ts,
    }
    body = json.dumps({"type": "event_callback", "event_id": "EvBAD", "event": event})
    response = await service.post(body, "application/json")
    assert response.status == 400
    async with service.core.store.read() as reader:
        assert await reader.list_messages(1) == []


async def test_agents_reach_mcp_on_the_same_port_as_slacks_events(service: Harness) -> None:
    reply = await service.command("agent token coder", command="/task-admin", user=ADMIN)
    token = re.search(r"`(twk_[^`]+)`", reply)
    assert token is not None, reply
    await service.command("new Port-sharing task")
    await service.command("assign 1 coder")
    assert service.service.mcp_url == service.url + "/mcp"
    headers = {"Authorization": f"Bearer {token[1]}"}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(service.url + "/mcp", http_client=http)) as client,
    ):
        listed = await client.call_tool("list_my_tasks", {})
    assert not listed.is_error
    assert isinstance(listed.structured_content, dict)
    assert [t["ref"] for t in listed.structured_content["tasks"]] == ["C1#1"]
