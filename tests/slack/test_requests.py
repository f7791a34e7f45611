"""Requests at the front door: signatures over raw bytes, replays, and interactions' shape."""

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.status import TaskStatus
from channels.slack.gateway import SlackSignature
from tests.slack.conftest import ALICE, CHANNEL, SECRET, Harness, signed

FORM = "application/x-www-form-urlencoded"


def signed_bytes(body: bytes, timestamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    """Slack's headers for a body of any bytes: v0 HMAC-SHA256 of ``v0:timestamp:body``."""
    ts = str(timestamp if timestamp is not None else int(time.time()))
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest.hexdigest()}"}


async def post_raw(
    service: Harness, body: bytes, headers: dict[str, str], content_type: str = FORM
) -> tuple[int, bytes]:
    async with service.http.post(
        service.url + "/slack/events", data=body, headers={"Content-Type": content_type} | headers
    ) as response:
        return response.status, await response.read()


async def task_count(service: Harness) -> int:
    async with service.core.store.read() as reader:
        return len(await reader.list_tasks())


def slash_command(text: str, user: str = ALICE) -> str:
    return urlencode(
        {
            "command": "/task",
            "text": text,
            "user_id": user,
            "channel_id": CHANNEL,
            "team_id": "T1",
            "trigger_id": "trigger-replay",
            "response_url": "https://hooks.invalid/response/replay",
        }
    )


NOT_UTF8 = b"command=%2Ftask&text=new+\xff\xfe+Sneaky&user_id=UALICE01&channel_id=C1"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Slack-Request-Timestamp": str(int(time.time()))},
        signed_bytes(NOT_UTF8, secret="not-the-secret"),
        signed_bytes(NOT_UTF8, timestamp=int(time.time()) - 6 * 60),
        signed_bytes(NOT_UTF8 + b"tampered"),
    ],
    ids=["no-headers", "no-signature", "wrong-secret", "stale", "other-body"],
)
async def test_an_unsigned_body_that_is_not_utf8_gets_401(
    service: Harness, headers: dict[str, str]
) -> None:
    status, _ = await post_raw(service, NOT_UTF8, headers)
    assert status == 401
    assert await task_count(service) == 0


async def test_a_signed_body_that_is_not_utf8_gets_400_and_runs_nothing(service: Harness) -> None:
    status, body = await post_raw(service, NOT_UTF8, signed_bytes(NOT_UTF8))
    assert status == 400
    assert b"not a Slack payload" in body
    assert await task_count(service) == 0


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        ("\u0661\u0667" + "\u0660" * 8, "v0=00"),  # Arabic-Indic digits: str.isdigit() says yes
        (str(int(time.time())), "v0=\u00e9" + "0" * 63),
        ("-1", "v0=00"),
    ],
    ids=["non-ascii-digits", "non-ascii-signature", "negative-timestamp"],
)
def test_a_signature_in_unexpected_characters_is_simply_not_valid(
    timestamp: str, signature: str
) -> None:
    assert SlackSignature(SECRET).verify(b"x", timestamp, signature) is False


def test_a_signature_is_checked_within_five_minutes_either_way() -> None:
    now = 1_700_000_000.0
    signer = SlackSignature(SECRET, now=lambda: now)
    for offset, valid in [(-300, True), (300, True), (-301, False), (301, False)]:
        headers = signed_bytes(b"body", timestamp=int(now) + offset)
        verdict = signer.verify(
            b"body", headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
        )
        assert verdict is valid, offset


async def test_the_same_signed_slash_command_posted_twice_runs_once(service: Harness) -> None:
    body = slash_command("new Replayed task")
    headers = signed(body)
    first_status, first = await post_raw(service, body.encode(), headers)
    replay_status, replay = await post_raw(service, body.encode(), headers)
    assert first_status == 200
    assert "Created *C1#1*" in json.loads(first)["text"]
    assert (replay_status, replay) == (200, b"")
    assert await task_count(service) == 1
    async with service.core.store.read() as reader:
        [task] = await reader.list_tasks()
        assert [e.kind.value for e in await reader.list_events(task.id)] == ["created"]


async def test_the_same_command_signed_again_later_is_a_new_request(service: Harness) -> None:
    body = slash_command("new Twice on purpose")
    stamp = int(time.time())
    for timestamp in (stamp - 2, stamp):
        status, _ = await post_raw(service, body.encode(), signed(body, timestamp=timestamp))
        assert status == 200
    assert await task_count(service) == 2


async def test_the_same_signed_card_click_posted_twice_moves_the_task_once(
    service: Harness,
) -> None:
    await service.command("new Click me once")
    await service.command("assign 1 coder")
    await service.deliver()
    click = {
        "type": "block_actions",
        "user": {"id": ALICE},
        "team": {"id": "T1"},
        "channel": {"id": CHANNEL},
        "trigger_id": "trigger-click",
        "actions": [{"action_id": "task_status_in_progress", "type": "button", "value": "C1#1"}],
    }
    body = urlencode({"payload": json.dumps(click)})
    headers = signed(body)
    assert (await post_raw(service, body.encode(), headers))[0] == 200
    assert await post_raw(service, body.encode(), headers) == (200, b"")
    task = await service.task(1)
    assert task.status == TaskStatus.IN_PROGRESS
    async with service.core.store.read() as reader:
        kinds = [e.kind.value for e in await reader.list_events(task.id)]
    assert kinds.count("status_changed") == 1, kinds


BUTTON = {"action_id": "task_status_in_progress", "type": "button", "value": "C1#1"}
BASE_CLICK = {"type": "block_actions", "channel": {"id": CHANNEL}, "team": {"id": "T1"}}


@pytest.mark.parametrize(
    "payload",
    [
        BASE_CLICK | {"actions": [BUTTON]},
        BASE_CLICK | {"user": ALICE, "actions": [BUTTON]},
        BASE_CLICK | {"user": {"id": 7}, "actions": [BUTTON]},
        BASE_CLICK | {"user": {"name": "alice"}, "actions": [BUTTON]},
        BASE_CLICK | {"user": {"id": ALICE}},
        BASE_CLICK | {"user": {"id": ALICE}, "actions": []},
        BASE_CLICK | {"user": {"id": ALICE}, "actions": ["task_status_in_progress"]},
        BASE_CLICK | {"user": {"id": ALICE}, "actions": [{"type": "button", "value": "C1#1"}]},
        BASE_CLICK
        | {"user": {"id": ALICE}, "actions": [{"action_id": "task_cancel", "type": "button"}]},
        BASE_CLICK
        | {
            "user": {"id": ALICE},
            "actions": [{"action_id": "task_assign", "selected_option": {"text": "x"}}],
        },
        BASE_CLICK
        | {"user": {"id": ALICE}, "actions": [{"action_id": "task_cancel", "value": ["C1#1"]}]},
        {"type": "view_submission", "user": {"id": ALICE}},
        {"type": "view_submission", "view": {"callback_id": "create_task_modal"}},
        {
            "type": "view_submission",
            "user": {"id": ALICE},
            "view": {"callback_id": "create_task_modal", "private_metadata": "{}"},
        },
        {
            "type": "view_submission",
            "user": {"id": ALICE},
            "view": {"callback_id": "create_task_modal", "private_metadata": 1, "state": {}},
        },
        {"type": "message_action", "callback_id": "create_task_from_message", "channel": {}},
        {"type": "message_action", "callback_id": "create_task_from_message", "user": {}},
        {"type": "shortcut", "callback_id": "anything"},
    ],
    ids=[
        "no-user",
        "user-as-text",
        "user-id-a-number",
        "user-without-id",
        "no-actions",
        "empty-actions",
        "action-not-an-object",
        "action-without-action-id",
        "button-without-value",
        "menu-without-selected-value",
        "value-not-a-string",
        "submission-without-view",
        "submission-without-user",
        "submission-without-state",
        "metadata-not-a-string",
        "message-shortcut-without-user",
        "message-shortcut-without-channel",
        "global-shortcut-without-user",
    ],
)
async def test_a_signed_interaction_missing_what_it_needs_gets_400_and_changes_nothing(
    service: Harness, payload: dict[str, Any]
) -> None:
    await service.command("new Untouched")
    await service.deliver()
    before = len(service.standin.calls)
    response = await service.interact(payload)
    assert response.status == 400
    assert "malformed Slack payload" in await response.text()
    assert (await service.task(1)).status == TaskStatus.TODO
    assert service.standin.calls[before:] == []


@pytest.mark.parametrize(
    "fields", [{"user_id": ""}, {"channel_id": ""}], ids=["no-user", "no-channel"]
)
async def test_a_signed_slash_command_without_its_user_or_channel_gets_400(
    service: Harness, fields: dict[str, str]
) -> None:
    form = {"command": "/task", "text": "new Nobody's", "user_id": ALICE, "channel_id": CHANNEL}
    response = await service.post(urlencode(form | fields), FORM)
    assert response.status == 400
    assert await task_count(service) == 0


#: Ids the listeners answer to, so fuzzed payloads reach them, not only the gateway's checks.
_real_ids = st.sampled_from(
    [
        "create_task_modal",
        "agent_key_modal",
        "create_task_from_message",
        "task_assign",
        "task_cancel",
        "task_status_done",
        "task_status_reopen",
        "C1#1",
        "C1#1 coder",
        "modal",
        CHANNEL,
        ALICE,
        '{"channel": "C1", "thread_ts": "1.0"}',
        '{"agent": "coder"}',
        "{}",
        "[]",
    ]
)
_ids = st.one_of(
    st.none(), _real_ids, st.text(max_size=6), st.integers(), st.lists(st.text(max_size=3))
)
_objects = st.dictionaries(
    st.sampled_from(
        [
            "id",
            "value",
            "action_id",
            "selected_option",
            "type",
            "callback_id",
            "private_metadata",
            "state",
        ]
    ),
    st.one_of(_ids, st.dictionaries(st.sampled_from(["id", "value", "values"]), _ids, max_size=2)),
    max_size=6,
)
_interactions = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["block_actions", "view_submission", "message_action", "shortcut", "view_closed"]
        )
    },
    optional={
        "user": st.one_of(_ids, _objects),
        "channel": st.one_of(_ids, _objects),
        "actions": st.one_of(_ids, st.lists(st.one_of(_ids, _objects), max_size=2)),
        "view": st.one_of(_ids, _objects),
        "message": st.one_of(_ids, _objects),
        "trigger_id": _ids,
    },
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payload=_interactions)
@example(payload={"type": "shortcut", "user": {"id": ALICE}, "view": None})  # broke Bolt once
async def test_no_signed_interaction_payload_gets_a_5xx_or_breaks_a_listener(
    service: Harness, payload: dict[str, Any]
) -> None:
    try:
        body = urlencode({"payload": json.dumps(payload)})
    except (TypeError, ValueError):
        return
    with structlog.testing.capture_logs() as logs:
        async with service.http.post(
            service.url + "/slack/events",
            data=body,
            headers={"Content-Type": FORM} | signed(body),
        ) as response:
            assert response.status < 500, (payload, await response.text())
        await service.supervisor.drain()
    failures = [e for e in logs if e["log_level"] in ("error", "critical")]
    assert failures == [], (payload, failures)


async def test_a_request_body_of_random_bytes_is_401_unsigned_and_400_signed(
    service: Harness,
) -> None:
    noise = bytes(range(256)) * 4
    for content_type in (FORM, "application/json"):
        assert (await post_raw(service, noise, {}, content_type))[0] == 401
        assert (await post_raw(service, noise, signed_bytes(noise), content_type))[0] == 400
