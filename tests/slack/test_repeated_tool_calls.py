"""An external agent sends a call again with its idempotency key, through the SDK's MCP client
against the service's own endpoint: Slack's stand-in gets one post, and the key names one call."""

from datetime import timedelta
from typing import Any

import structlog

from bot.tool_requests import KEPT_FOR, KEYED_TOOLS
from scheduler.jobs import PRUNE_TOOL_REQUESTS_JOB_ID
from tests.slack.conftest import CHANNEL, Harness

KEY = "9b7e1d0c-retry-of-one-post"


async def epoch_of_task_1(service: Harness) -> int:
    await service.command("new Add a health check")
    await service.command("assign 1 coder")
    await service.deliver()
    return (await service.task(1)).lease_epoch


def error_text(result: Any, tool: str) -> str:
    assert result.is_error
    text: str = result.content[0].text
    return text.removeprefix(f"Error executing tool {tool}: ")


def agent_posts(service: Harness, text: str) -> list[str]:
    return [m["text"] for m in service.standin.posts(CHANNEL) if text in m["text"]]


async def test_a_post_sent_again_with_its_key_reaches_the_thread_once(service: Harness) -> None:
    epoch = await epoch_of_task_1(service)
    arguments = {"task": "C1#1", "text": "Tests pass", "epoch": epoch, "idempotency_key": KEY}
    async with service.mcp_as("coder") as client:
        first = await client.call_tool("post_update", arguments)
        again = await client.call_tool("post_update", arguments)
    await service.deliver()

    assert not first.is_error
    assert not again.is_error
    assert again.structured_content == first.structured_content
    assert agent_posts(service, "Tests pass") == ["Tests pass"]


async def test_a_key_used_for_a_post_is_refused_for_a_status_change(service: Harness) -> None:
    epoch = await epoch_of_task_1(service)
    async with service.mcp_as("coder") as client:
        await client.call_tool(
            "post_update",
            {"task": "C1#1", "text": "Tests pass", "epoch": epoch, "idempotency_key": KEY},
        )
        moved = await client.call_tool(
            "update_task_status",
            {"task": "C1#1", "status": "in_review", "epoch": epoch, "idempotency_key": KEY},
        )

    assert error_text(moved, "update_task_status").startswith(
        "invalid: This idempotency_key was already used for post_update"
    )
    assert (await service.task(1)).status == "todo"


async def test_a_key_too_long_is_refused_and_nothing_is_posted(service: Harness) -> None:
    epoch = await epoch_of_task_1(service)
    async with service.mcp_as("coder") as client:
        refused = await client.call_tool(
            "post_update",
            {"task": "C1#1", "text": "Tests pass", "epoch": epoch, "idempotency_key": "k" * 201},
        )
    await service.deliver()

    assert error_text(refused, "post_update").startswith(
        "invalid: An idempotency_key must be 1 to 200 printable characters"
    )
    assert agent_posts(service, "Tests pass") == []


async def test_the_tools_that_change_things_describe_the_key_to_clients(service: Harness) -> None:
    async with service.mcp_as("coder") as client:
        listed = {t.name: t.input_schema for t in (await client.list_tools()).tools}
    takes_a_key = {
        name for name, schema in listed.items() if "idempotency_key" in schema["properties"]
    }
    assert takes_a_key == KEYED_TOOLS  # the tools the worker sends a key with
    for name in KEYED_TOOLS:
        assert "same key" in listed[name]["properties"]["idempotency_key"]["description"], name
        assert "idempotency_key" not in listed[name].get("required", [])


async def test_the_service_forgets_keys_a_day_old_in_its_hourly_housekeeping(
    service: Harness,
) -> None:
    epoch = await epoch_of_task_1(service)
    async with service.mcp_as("coder") as client:
        await client.call_tool(
            "post_update",
            {"task": "C1#1", "text": "Tests pass", "epoch": epoch, "idempotency_key": KEY},
        )
    job = service.service.scheduler.get_job(PRUNE_TOOL_REQUESTS_JOB_ID)
    assert job.trigger.interval == timedelta(hours=1)
    assert (job.max_instances, job.coalesce) == (1, True)

    service.clock.advance(KEPT_FOR.total_seconds() + 1)
    with structlog.testing.capture_logs() as logs:
        await job.func(*job.args)  # the scheduler's call, made at once

    assert logs == [{"event": "prune_tool_requests.done", "forgotten": 1, "log_level": "info"}]
