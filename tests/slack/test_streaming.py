"""A built-in agent's words stream into its task's thread as the model writes them.

The real service with the real slack_sdk against the Slack stand-in, and the real anthropic
client against the Anthropic stand-in (which sends each text block as several deltas).
"""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from bot.agents import AgentKind, AgentSettings
from bot.outbox import OutboxKind
from bot.task import Actor, Task, TaskRef, ThreadMessage
from channels.slack.parsing import unescape
from tests.agents.standins import AnthropicStandIn, Reply, Text, ToolUse
from tests.conftest import FakeClock
from tests.slack.conftest import ALICE, CHANNEL, Harness, start_service
from tests.slack.standin import SlackStandIn

STREAM_CALLS = ("chat.startStream", "chat.appendStream", "chat.stopStream")


@pytest.fixture
async def service(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock, anthropic: AnthropicStandIn
) -> AsyncIterator[Harness]:
    """The service with the built-in agent ``claude-1`` (shown as "Claude") on the Anthropic
    stand-in, assigned task C1#1 by Alice."""
    async for harness in start_service(
        sqlite_url, standin, clock, anthropic_base_url=anthropic.url
    ):
        await harness.core.registry.add_agent(
            "claude-1",
            AgentKind.CLAUDE,
            display_name="Claude",
            settings=AgentSettings(model="claude-standin-1"),
        )
        await harness.core.registry.set_api_key("claude-1", "sk-ant-streaming-test")
        await harness.command("new Add a health check")
        await harness.command("assign 1 claude-1")
        await harness.deliver()
        yield harness


async def run_agent(service: Harness) -> None:
    """Starts the due run, waits for it to end, then delivers what it left in the outbox."""
    runner = service.service.runner
    assert await runner.run_once() == 1
    async with asyncio.timeout(10):
        for handle in list(runner.active.values()):
            await handle.task
    await service.deliver()


def streamed(service: Harness) -> list[dict[str, Any]]:
    """The messages that were streamed into Slack, in order."""
    return [m for m in service.standin.messages if "streaming" in m]


def agent_posts(service: Harness) -> list[str]:
    """The texts of agents' posts delivered through the outbox (chat.postMessage)."""
    return [
        m["text"]
        for m in service.standin.posts(CHANNEL)
        if (m.get("metadata") or {}).get("event_type") == "threadwork_agent_post"
    ]


async def stored_messages(service: Harness) -> list[ThreadMessage]:
    async with service.core.store.read() as reader:
        return await reader.list_messages((await service.task(1)).id)


async def test_a_step_streams_into_the_thread_and_is_stored_once_as_the_agents_post(
    service: Harness, anthropic: AnthropicStandIn, clock: FakeClock
) -> None:
    assigned = await service.task(1)
    seen: dict[str, Any] = {}

    async def model(_body: dict[str, Any]) -> Reply:
        if len(anthropic.requests) == 1:
            clock.advance(30)
            words = Text("Reading the thread first, then I will add the endpoint.")
            return Reply([words, ToolUse("get_task", {"task": "C1#1"})])
        # The first step has ended: how it left the task and the outbox.
        seen["task"] = await service.task(1)
        async with service.core.store.read() as reader:
            seen["outbox"] = await reader.list_open_outbox(100)
        return Reply([ToolUse("update_task_status", {"task": "C1#1", "status": "in_review"})])

    anthropic.responder = model
    await run_agent(service)

    first = streamed(service)[0]
    expected = "Reading the thread first, then I will add the endpoint.\n… reading the thread"
    assert (first["text"], first["streaming"]) == (expected, False)
    assert (first["thread_ts"], first["username"]) == (assigned.thread_ts, "Claude")
    [start, *_] = service.standin.calls_to("chat.startStream")
    assert (start.args["recipient_user_id"], start.args["recipient_team_id"]) == (ALICE, "T1")
    assert start.args["icon_emoji"] == ":robot_face:"
    appended = [
        c for c in service.standin.calls_to("chat.appendStream") if c.args["ts"] == first["ts"]
    ]
    stopped = [
        c for c in service.standin.calls_to("chat.stopStream") if c.args["ts"] == first["ts"]
    ]
    assert appended
    assert len(stopped) == 1
    assert "".join(c.args["markdown_text"] for c in appended) == first["text"]

    [stored] = [m for m in await stored_messages(service) if m.ts == first["ts"]]
    assert (stored.text, stored.author) == (unescape(first["text"]), "agent:claude-1")
    # Progress once, when the stream completed (reading the thread renews nothing), and no
    # post of the same words through the outbox.
    renewed: Task = seen["task"]
    assert assigned.last_progress_at is not None
    assert renewed.last_progress_at == assigned.last_progress_at + timedelta(seconds=30)
    assert not [r for r in seen["outbox"] if r.kind == OutboxKind.AGENT_POST]
    assert agent_posts(service) == []
    assert (await service.task(1)).status == "in_review"


async def test_where_slack_cannot_stream_each_steps_text_is_posted_once_instead(
    service: Harness, anthropic: AnthropicStandIn
) -> None:
    service.standin.fail("chat.startStream", error="channel_type_not_supported")
    anthropic.script(
        Reply(
            [
                Text("On it."),
                ToolUse("update_task_status", {"task": "C1#1", "status": "in_progress"}),
            ]
        ),
        Reply(
            [
                Text("PR is up."),
                ToolUse("update_task_status", {"task": "C1#1", "status": "in_review"}),
            ]
        ),
    )
    await run_agent(service)

    assert agent_posts(service) == ["On it.", "PR is up."]
    posted_as = [c.args.get("username") for c in service.standin.calls_to("chat.postMessage")]
    assert posted_as.count("Claude") == 2
    assert streamed(service) == []
    assert [c.method for c in service.standin.calls if c.method in STREAM_CALLS] == [
        "chat.startStream"
    ]
    assert [m.text for m in await stored_messages(service) if m.author == "agent:claude-1"] == [
        "On it.",
        "PR is up.",
    ]
    assert (await service.task(1)).status == "in_review"


@pytest.mark.parametrize("failing", ["chat.appendStream", "chat.stopStream"])
async def test_a_stream_that_breaks_midway_still_ends_with_the_whole_text_posted(
    service: Harness, anthropic: AnthropicStandIn, failing: str
) -> None:
    service.standin.fail(failing, error="message_not_in_streaming_state")
    anthropic.script(
        Reply([Text("Adding the endpoint now."), ToolUse("get_task", {"task": "C1#1"})]),
        Reply([ToolUse("update_task_status", {"task": "C1#1", "status": "in_review"})]),
    )
    await run_agent(service)

    whole = "Adding the endpoint now.\n… reading the thread"
    assert agent_posts(service) == [whole]
    stored = [m.text for m in await stored_messages(service) if m.author == "agent:claude-1"]
    assert whole in stored
    assert (await service.task(1)).status == "in_review"


async def test_long_words_reach_slack_whole_and_inert_in_calls_of_at_most_12000_characters(
    service: Harness, anthropic: AnthropicStandIn
) -> None:
    words = "R&D <!channel> " * 2000  # 30,000 characters, more once escaped
    anthropic.script(
        Reply([Text(words), ToolUse("update_task_status", {"task": "C1#1", "status": "in_review"})])
    )
    await run_agent(service)

    [message] = streamed(service)
    assert unescape(message["text"]) == words.strip() + "\n✓ moved to in_review"
    assert "<!channel>" not in message["text"]
    calls = [c for c in service.standin.calls if c.method in STREAM_CALLS]
    assert all(len(c.args.get("markdown_text") or "") <= 12_000 for c in calls)
    [stored] = [m for m in await stored_messages(service) if m.ts == message["ts"]]
    assert stored.text == unescape(message["text"])


async def test_a_stream_open_when_the_run_learns_its_task_was_cancelled_is_ended_unstored(
    service: Harness, anthropic: AnthropicStandIn
) -> None:
    async def model(_body: dict[str, Any]) -> Reply:
        if len(anthropic.requests) == 1:
            return Reply([Text("Starting."), ToolUse("get_task", {"task": "C1#1"})])
        await service.core.board.cancel_task(TaskRef(CHANNEL, 1), Actor.user(ALICE))
        return Reply([Text("Now writing the endpoint.")])

    anthropic.responder = model
    await run_agent(service)

    first, second = streamed(service)
    assert (first["text"], first["streaming"]) == ("Starting.\n… reading the thread", False)
    # What was shown before the run learnt it stopped stays, ended; nothing more is sent.
    assert second["streaming"] is False
    assert "Now writing the endpoint.".startswith(second["text"])
    stored = [m.text for m in await stored_messages(service) if m.author == "agent:claude-1"]
    assert stored == ["Starting.\n… reading the thread"]
    assert agent_posts(service) == []
    assert (await service.task(1)).status == "canceled"
