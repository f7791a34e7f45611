"""One Slack stand-in: the sandbox's Web API is the tests' stand-in, method for method.

Every Web API method threadwork's code calls (found in its source, so a new call is caught) is
answered by the sandbox's workspace, and with the same shapes as by the tests' stand-in: each
method is called on both through slack_sdk, with the same arguments, and their answers compared
key by key. The tests' stand-in adds failure injection and no Web API method of its own.
"""

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from channels.sandbox.slack_api import SlackWebApi
from channels.sandbox.workspace import ADMIN, GENERAL, seeded_api
from tests.conftest import FakeClock
from tests.slack.standin import TOKEN, SlackStandIn

CHANNELS = Path(__file__).parents[2] / "channels"
#: The Web API's method families (the MCP tool client's list_tools and call_tool are not).
SLACK_FAMILIES = ("agents.", "apps.", "auth.", "chat.", "conversations.", "users.", "views.")
_CALL = re.compile(r"client\.(?P<method>[a-z]+_[A-Za-z_]+)\(")


def methods_threadwork_calls() -> set[str]:
    """The Web API methods called in threadwork's source, as Slack names them."""
    found = set()
    for source in CHANNELS.rglob("*.py"):
        if "sandbox" in source.parts:
            continue
        for match in _CALL.finditer(source.read_text(encoding="utf-8")):
            found.add(match["method"].replace("_", ".", 1).replace("_", "."))
    return {m for m in found if m.startswith(SLACK_FAMILIES)}


def handler(method: str) -> str:
    return "_" + method.replace(".", "_")


def shape(value: Any) -> Any:
    """A value's structure: the keys of objects (recursively) and the types of the rest."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


def test_every_method_threadwork_calls_is_answered_by_the_workspace() -> None:
    called = methods_threadwork_calls()
    assert {"chat.postMessage", "chat.startStream", "agents.sessions.setStatus"} <= called
    missing = sorted(m for m in called if not hasattr(SlackWebApi, handler(m)))
    assert missing == []


def test_the_tests_stand_in_is_the_workspace_with_failure_injection_alone() -> None:
    assert issubclass(SlackStandIn, SlackWebApi)
    handlers = tuple("_" + family.replace(".", "_") for family in SLACK_FAMILIES)
    own = {name for name in vars(SlackStandIn) if name.startswith(handlers)}
    assert own == set(), "a Web API method of the tests' own would be a second implementation"
    assert "perform" not in vars(SlackStandIn), "the tests' stand-in performs calls as Slack does"


@pytest.fixture
async def both() -> AsyncIterator[tuple[AsyncWebClient, AsyncWebClient]]:
    """A client on the sandbox's workspace and one on the tests' stand-in, the same people in
    the same channels, on the same clock."""
    clock = FakeClock()
    sandbox = seeded_api(clock, TOKEN)
    standin = SlackStandIn(
        users=sandbox.users, members=sandbox.members, channels_of=sandbox.channels_of, clock=clock
    )
    for api in (sandbox, standin):
        await api.start()
    clients = tuple(AsyncWebClient(token=TOKEN, base_url=api.url) for api in (sandbox, standin))
    yield clients[0], clients[1]
    for api in (sandbox, standin):
        await api.close()


async def calls(client: AsyncWebClient) -> dict[str, Any]:
    """Every method threadwork calls, once, with the arguments it passes."""
    post = await client.chat_postMessage(
        channel=GENERAL, text="card", metadata={"event_type": "x", "event_payload": {}}
    )
    ts = str(post["ts"])
    stream = await client.chat_startStream(
        channel=GENERAL, thread_ts=ts, recipient_user_id=ADMIN, recipient_team_id="T1"
    )
    answers = {
        "auth.test": await client.auth_test(),
        "chat.postMessage": post,
        "chat.update": await client.chat_update(channel=GENERAL, ts=ts, text="card v2"),
        "chat.postEphemeral": await client.chat_postEphemeral(
            channel=GENERAL, user=ADMIN, text="hi"
        ),
        "chat.startStream": stream,
        "chat.appendStream": await client.chat_appendStream(
            channel=GENERAL, ts=stream["ts"], markdown_text="more"
        ),
        "agents.sessions.setStatus": await client.agents_sessions_setStatus(
            channel_id=GENERAL,
            thread_ts=ts,
            status="processing",
            title="t",
            initiator_user_id=ADMIN,
        ),
        "chat.stopStream": await client.chat_stopStream(channel=GENERAL, ts=stream["ts"]),
        "conversations.replies": await client.conversations_replies(
            channel=GENERAL, ts=ts, include_all_metadata=True
        ),
        "conversations.history": await client.conversations_history(
            channel=GENERAL, include_all_metadata=True
        ),
        "conversations.members": await client.conversations_members(channel=GENERAL),
        "users.info": await client.users_info(user=ADMIN),
        "users.conversations": await client.users_conversations(user=ADMIN),
        "views.open": await client.views_open(
            trigger_id="t1", view={"type": "modal", "title": {"type": "plain_text", "text": "x"}}
        ),
        "views.publish": await client.views_publish(
            user_id=ADMIN, view={"type": "home", "blocks": []}
        ),
    }
    return {method: answer.data for method, answer in answers.items()}


async def test_the_workspace_answers_each_method_with_the_shapes_of_the_tests_stand_in(
    both: tuple[AsyncWebClient, AsyncWebClient],
) -> None:
    sandbox, standin = both
    from_sandbox, from_standin = await calls(sandbox), await calls(standin)
    assert set(from_sandbox) >= methods_threadwork_calls() - {"apps.connections.open"}
    for method in from_sandbox:
        assert shape(from_sandbox[method]) == shape(from_standin[method]), method
        assert from_sandbox[method]["ok"] is True, (method, from_sandbox[method])
