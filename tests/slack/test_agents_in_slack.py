"""A built-in Claude agent working a task end to end: Slack commands in, Slack posts out."""

from collections.abc import AsyncIterator

import pytest

from bot.agents import AgentKind, AgentSettings
from bot.status import TaskStatus
from tests.agents.standins import AnthropicStandIn, Reply, Text, ToolUse
from tests.conftest import FakeClock
from tests.slack.conftest import Harness, start_service
from tests.slack.standin import SlackStandIn


@pytest.fixture
async def service(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock, anthropic: AnthropicStandIn
) -> AsyncIterator[Harness]:
    """The service with its built-in runtime pointed at the Anthropic stand-in."""
    async for harness in start_service(
        sqlite_url, standin, clock, anthropic_base_url=anthropic.url
    ):
        yield harness


async def test_assigning_a_claude_agent_gets_the_task_to_review_and_the_card_follows(
    service: Harness, anthropic: AnthropicStandIn
) -> None:
    core = service.core
    runner = service.service.runner
    await core.registry.add_agent(
        "claude-1",
        AgentKind.CLAUDE,
        display_name="Claude",
        settings=AgentSettings(model="claude-standin-1"),
    )
    await core.registry.set_api_key("claude-1", "sk-ant-slack-test")
    await service.command("new Add a health check")
    await service.command("assign 1 claude-1")
    await service.deliver()
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
                ToolUse(
                    "update_task_status",
                    {"task": "C1#1", "status": "in_review", "note": "PR #7"},
                ),
            ]
        ),
    )
    assert await runner.run_once() == 1
    for handle in list(runner.active.values()):
        await handle.task
    await service.deliver()

    assert (await service.task(1)).status == TaskStatus.IN_REVIEW
    # The agent's words streamed into the thread under its name, a line per tool call.
    streamed = [m for m in service.standin.messages if "streaming" in m]
    assert [(m["text"], m["streaming"]) for m in streamed] == [
        ("On it.\n✓ moved to in_progress", False),
        ("PR is up.\n✓ moved to in_review", False),
    ]
    thread_ts = (await service.task(1)).thread_ts
    assert all(m["thread_ts"] == thread_ts for m in streamed)
    assert [m["username"] for m in streamed] == ["Claude", "Claude"]
    card = service.standin.calls_to("chat.update")[-1].args["blocks"][1]["fields"][0]["text"]
    assert "`in_review`" in card
    assert anthropic.requests[0].api_key == "sk-ant-slack-test"
