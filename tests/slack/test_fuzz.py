"""Fuzzed slash commands and events through signed requests: never a 5xx, and a refusal changes
nothing."""

import json
from typing import Any

import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.slack.conftest import ADMIN, ALICE, CHANNEL, Harness

#: Someone Slack knows but who is in no channel of the workspace.
STRANGER = "USTRANG1"

_words = st.one_of(
    st.sampled_from(
        ["new", "assign", "status", "show", "log", "list", "cancel", "reopen", "help", "agent"]
    ),
    st.sampled_from(["1", "#1", "C1#1", "C9#1", "0", "-1", "99999999999999999999999", "#"]),
    st.sampled_from(["coder", "<@UCODER01>", "@nobody", "done", "in_review", "blocked", "todo"]),
    st.sampled_from(["<!channel>", '"', "'", "&amp;", "\u202e", "\x00", "add", "policy"]),
    st.text(max_size=12),
)
_command_text = st.lists(_words, max_size=6).map(" ".join)

REFUSED = (":warning:", ":no_entry:", "There is no task")


async def board_state(service: Harness) -> tuple[object, ...]:
    async with service.core.store.read() as reader:
        tasks = await reader.list_tasks()
        events = [await reader.list_events(t.id) for t in tasks]
        agents = await reader.list_agents()
    return tasks, events, agents, await service.core.store.list_outbox()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=_command_text,
    command=st.sampled_from(["/task", "/task-admin"]),
    user=st.sampled_from([ALICE, ADMIN, STRANGER]),
)
async def test_any_slash_command_text_is_answered_and_a_refusal_changes_nothing(
    service: Harness, text: str, command: str, user: str
) -> None:
    before = await board_state(service)
    reply = await service.command(text, command=command, user=user)  # asserts a 200
    assert reply
    if reply.startswith(REFUSED):
        assert await board_state(service) == before, (text, reply)


_values = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=8),
    st.sampled_from([CHANNEL, ALICE, "1700000000.000100", "U0"]),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.sampled_from(["id", "ts"]), st.text(max_size=4), max_size=2),
)
_events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "message",
                "app_mention",
                "app_home_opened",
                "member_joined_channel",
                "member_left_channel",
                "reaction_added",
            ]
        )
    },
    optional={
        key: _values
        for key in ("channel", "user", "text", "ts", "thread_ts", "bot_id", "subtype", "tab")
    },
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(event=_events)
async def test_no_signed_event_gets_a_5xx_or_breaks_a_listener(
    service: Harness, event: dict[str, Any]
) -> None:
    try:
        json.dumps(event)
    except (TypeError, ValueError):
        return
    with structlog.testing.capture_logs() as logs:
        assert await service.event(event) < 500, event
    failures = [e for e in logs if e["log_level"] in ("error", "critical")]
    assert failures == [], (event, failures)
