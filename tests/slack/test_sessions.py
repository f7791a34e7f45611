"""Agent sessions in Slack: the thread's session follows the task, and Stop stops the attempt.

Everything goes through the real service: signed slash commands and events in, the real
slack_sdk against the Slack stand-in out, built-in agents against the Anthropic stand-in, and an
external agent through the real MCP client.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.agents import AgentKind, AgentSettings, Autonomy
from bot.status import TaskStatus
from bot.task import EventKind, Task
from tests.agents.standins import AnthropicStandIn, Hang, Reply, Text, ToolUse
from tests.conftest import FakeClock
from tests.slack.conftest import ALICE, CHANNEL, Harness, start_service
from tests.slack.standin import SlackStandIn

BOB = "UBOB0001"


@pytest.fixture
async def service(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock, anthropic: AnthropicStandIn
) -> AsyncIterator[Harness]:
    """The service with its built-in runtime pointed at the Anthropic stand-in, a Claude agent
    ``claude-1`` and an external agent ``coder``."""
    async for harness in start_service(
        sqlite_url, standin, clock, anthropic_base_url=anthropic.url
    ):
        registry = harness.core.registry
        await registry.add_agent(
            "claude-1",
            AgentKind.CLAUDE,
            display_name="Claude",
            settings=AgentSettings(model="claude-standin-1"),
        )
        await registry.set_api_key("claude-1", "sk-ant-session-test")
        await registry.add_agent("coder", display_name="Coder")
        yield harness


def status(task: str, to: str, note: str | None = None) -> ToolUse:
    args = {"task": task, "status": to} | ({"note": note} if note else {})
    return ToolUse("update_task_status", args)


def sessions(service: Harness, task: Task) -> list[str]:
    assert task.thread_ts is not None
    return service.standin.session_statuses(CHANNEL, task.thread_ts)


async def finish_runs(service: Harness) -> None:
    """Waits for the runs under way to end, then delivers what they left in the outbox."""
    for handle in list(service.service.runner.active.values()):
        await handle.task
    await service.deliver()


async def assigned(service: Harness, agent: str, title: str = "Add a health check") -> Task:
    """Task 1, created and assigned to ``agent`` by Alice, with its card and directive out."""
    await service.command(f"new {title}")
    await service.command(f"assign 1 {agent}")
    await service.deliver()
    return await service.task(1)


async def hung(service: Harness, anthropic: AnthropicStandIn) -> Task:
    """Task 1 assigned to ``claude-1``, whose run is stuck in its model call; delivered."""
    task = await assigned(service, "claude-1")
    anthropic.script(Hang())
    await service.service.runner.run_once()
    async with asyncio.timeout(10):
        await anthropic.until_hung(1)
    await service.deliver()
    return task


def stop_event(task: Task, user: str = ALICE, streams: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "agent_session_stopped",
        "channel": task.channel_id,
        "thread_ts": task.thread_ts,
        "user": user,
        "streaming_message_ts": streams or [],
        "event_ts": "1783536983.783769",
    }


async def until_status(service: Harness, status: TaskStatus) -> None:
    """Waits (bounded) for task 1 to reach ``status``, woken by the service's commits."""
    async with asyncio.timeout(10):
        while (await service.task(1)).status != status:
            await service.core.signal.changed()


async def event_kinds(service: Harness, task: Task) -> list[EventKind]:
    async with service.core.store.read() as reader:
        return [e.kind for e in await reader.list_events(task.id)]


async def test_a_built_in_agent_s_session_goes_processing_active_closed_with_its_title(
    service: Harness, anthropic: AnthropicStandIn
) -> None:
    task = await assigned(service, "claude-1")
    anthropic.script(
        Reply([Text("On it."), status("C1#1", "in_progress")]),
        Reply([Text("PR is up."), status("C1#1", "in_review", "PR #7")]),
    )
    await service.service.runner.run_once()
    await finish_runs(service)
    assert (await service.task(1)).status == TaskStatus.IN_REVIEW
    await service.command("status 1 done")
    await service.deliver()

    assert sessions(service, task) == ["processing", "active", "closed"]
    [created, *_] = service.standin.calls_to("agents.sessions.setStatus")
    assert created.args["title"] == "Add a health check"
    assert created.args["initiator_user_id"] == ALICE
    assert created.args["username"] == "Claude"
    assert all(
        "title" not in c.args for c in service.standin.calls_to("agents.sessions.setStatus")[1:]
    )
    card = service.standin.calls_to("chat.update")[-1].args["blocks"][1]["fields"]
    assert any("*Session*" in f["text"] and "closed" in f["text"] for f in card)


async def test_a_task_waiting_for_an_answer_suspends_its_session_and_names_whom_it_waits_for(
    service: Harness, anthropic: AnthropicStandIn
) -> None:
    await service.core.registry.add_agent(
        "claude-waits",
        AgentKind.CLAUDE,
        settings=AgentSettings(model="claude-standin-1", autonomy=Autonomy.WAIT),
    )
    await service.core.registry.set_api_key("claude-waits", "sk-ant-session-test")
    task = await assigned(service, "claude-waits", "Pick a rollout strategy")
    anthropic.script(Reply([Text("Blue/green or canary?")]))
    await service.service.runner.run_once()
    await finish_runs(service)

    assert sessions(service, task)[-1] == "suspended"
    notices = [
        m
        for m in service.standin.posts(CHANNEL)
        if (m.get("metadata") or {}).get("event_type") == "threadwork_notice"
    ]
    assert len(notices) == 1
    assert f"waiting for <@{ALICE}>" in notices[0]["text"]
    assert notices[0]["thread_ts"] == task.thread_ts
    shown = await service.command("show 1")
    assert "waiting for a person" in shown


async def test_a_hung_model_stays_processing_through_the_redispatch_then_suspends_when_blocked(
    service: Harness, anthropic: AnthropicStandIn, clock: FakeClock
) -> None:
    task = await hung(service, anthropic)
    runner = service.service.runner
    assert sessions(service, task) == ["processing"]

    clock.advance(601)
    report = await service.core.reconciler.reconcile_stale_tasks()
    assert [str(r) for r in report.redispatched] == ["C1#1"]
    asked_again = asyncio.Event()

    async def hang_again(_body: dict[str, Any]) -> Hang:
        asked_again.set()
        return Hang()

    anthropic.responder = hang_again
    await runner.run_once()  # cancels the hung run and starts attempt 2, which hangs too
    async with asyncio.timeout(10):
        await asked_again.wait()
        await anthropic.until_hung(1)
    await service.deliver()
    assert sessions(service, task) == ["processing"]  # no call: it never left processing
    card = service.standin.calls_to("chat.update")[-1].args["blocks"][1]["fields"]
    assert any(f["text"] == "*Attempt*\n2/2" for f in card)

    clock.advance(601)
    report = await service.core.reconciler.reconcile_stale_tasks()
    assert [str(r) for r in report.blocked] == ["C1#1"]
    await runner.run_once()  # the block cancels the hung run
    await finish_runs(service)
    assert sessions(service, task) == ["processing", "suspended"]


async def test_stop_during_a_hung_model_call_cancels_the_run_and_blocks_the_task(
    service: Harness, anthropic: AnthropicStandIn
) -> None:
    task = await hung(service, anthropic)
    runner = service.service.runner
    [run] = runner.active.values()
    requests = len(anthropic.requests)

    # Not settled: settling waits for every supervised task, the hung run included.
    assert await service.event(stop_event(task), settle=False) == 200
    await until_status(service, TaskStatus.BLOCKED)
    await runner.run_once()
    async with asyncio.timeout(5):
        await asyncio.gather(run.task, return_exceptions=True)
    await service.deliver()

    # Cancelled (the SDK may report the cancelled read as its own timeout): ended, at once.
    assert run.task.done()
    assert len(anthropic.requests) == requests  # no model request after the stop
    stopped = await service.task(1)
    assert (stopped.status, stopped.claimed_by, stopped.assignee) == (
        TaskStatus.BLOCKED,
        None,
        "claude-1",
    )
    assert stopped.lease_epoch > task.lease_epoch
    async with service.core.store.read() as reader:
        events = await reader.list_events(task.id)
    [stop] = [e for e in events if e.kind == EventKind.STOPPED]
    assert stop.actor.id == ALICE
    [blocked] = [e for e in events if e.kind == EventKind.BLOCKED]
    assert blocked.data["note"] == f"stopped by <@{ALICE}>"
    assert sessions(service, task) == ["processing", "suspended"]
    confirmation = [m for m in service.standin.posts(CHANNEL) if "Stopped by" in m["text"]]
    assert len(confirmation) == 1
    assert "/task assign 1 claude-1" in confirmation[0]["text"]


async def test_the_card_stop_button_stops_the_attempt_as_the_session_button_does(
    service: Harness,
) -> None:
    task = await assigned(service, "coder")
    card = service.standin.calls_to("chat.update")[-1].args["blocks"]
    [actions] = [b for b in card if b["type"] == "actions"]
    assert "task_stop" in [e.get("action_id") for e in actions["elements"]]
    response = await service.interact(card_click("task_stop", "C1#1"))
    assert response.status == 200
    await service.supervisor.drain()
    await service.deliver()

    assert (await service.task(1)).status == TaskStatus.BLOCKED
    assert EventKind.STOPPED in await event_kinds(service, task)
    assert sessions(service, task) == ["processing", "suspended"]


def card_click(action_id: str, value: str, user: str = ALICE) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user},
        "channel": {"id": CHANNEL},
        "team": {"id": "T1"},
        "actions": [{"action_id": action_id, "value": value, "type": "button"}],
    }


async def test_stop_reaches_an_external_agent_at_once_and_refuses_its_next_status_change(
    service: Harness,
) -> None:
    task = await assigned(service, "coder")
    async with service.mcp_as("coder") as client:
        first = await client.call_tool("wait_for_work", {"timeout_s": 5})
        assert first.structured_content is not None
        [directive] = first.structured_content["work"]
        assert directive["reason"] == "directive"

        waiting = asyncio.create_task(client.call_tool("wait_for_work", {"timeout_s": 30}))
        assert await service.event(stop_event(task)) == 200
        async with asyncio.timeout(10):
            answered = await waiting
        assert answered.structured_content is not None
        assert answered.structured_content["work"] == [
            {"task": "C1#1", "reason": "stop", "epoch": (await service.task(1)).lease_epoch}
        ]
        refused = await client.call_tool(
            "update_task_status",
            {"task": "C1#1", "status": "in_progress", "epoch": directive["epoch"]},
        )
    assert refused.is_error
    assert "superseded: epoch" in str(refused.content[0].text)  # type: ignore[union-attr]  # a text block
    assert (await service.task(1)).status == TaskStatus.BLOCKED


async def test_a_stop_event_delivered_twice_or_pressed_twice_is_acted_on_once(
    service: Harness,
) -> None:
    task = await assigned(service, "coder")
    assert await service.event(stop_event(task), event_id="EvSTOP1") == 200
    assert await service.event(stop_event(task), event_id="EvSTOP1", retry=1) == 200
    assert await service.event(stop_event(task), event_id="EvSTOP2") == 200
    await service.deliver()

    kinds = await event_kinds(service, task)
    assert kinds.count(EventKind.STOPPED) == 1
    assert kinds.count(EventKind.BLOCKED) == 1
    assert len([m for m in service.standin.posts(CHANNEL) if "Stopped by" in m["text"]]) == 1
    told = service.standin.calls_to("chat.postEphemeral")
    assert [c.args["text"] for c in told] == [
        "C1#1 was not being worked on; there was nothing to stop."
    ]


async def test_a_stop_by_someone_without_closing_rights_is_refused_and_changes_nothing(
    service: Harness,
) -> None:
    task = await assigned(service, "coder")
    before = len(service.standin.calls_to("agents.sessions.setStatus"))
    assert await service.event(stop_event(task, user=BOB)) == 200
    await service.deliver()

    after = await service.task(1)
    assert (after.status, after.claimed_by, after.lease_epoch) == (
        task.status,
        "coder",
        task.lease_epoch,
    )
    assert EventKind.STOPPED not in await event_kinds(service, task)
    [told] = service.standin.calls_to("chat.postEphemeral")
    assert told.args["user"] == BOB
    assert told.args["thread_ts"] == task.thread_ts
    assert "Only the creator of C1#1" in told.args["text"]
    assert len(service.standin.calls_to("agents.sessions.setStatus")) == before


async def test_a_stop_with_streaming_messages_ends_those_streams(service: Harness) -> None:
    task = await assigned(service, "coder")
    assert task.thread_ts is not None
    started = service.standin._chat_startStream(
        {
            "channel": CHANNEL,
            "thread_ts": task.thread_ts,
            "recipient_user_id": ALICE,
            "recipient_team_id": "T1",
            "markdown_text": "Working on",
        }
    )
    assert await service.event(stop_event(task, streams=[started["ts"], "1.000001"])) == 200
    await service.deliver()

    stops = service.standin.calls_to("chat.stopStream")
    assert [c.args["ts"] for c in stops] == [started["ts"], "1.000001"]
    [streamed] = [m for m in service.standin.messages if m["ts"] == started["ts"]]
    assert streamed["streaming"] is False
    async with service.core.store.read() as reader:
        assert await reader.list_dead_outbox(10) == []


async def test_a_session_is_created_with_its_title_even_when_a_stream_ends_before_the_card_update(
    service: Harness, anthropic: AnthropicStandIn
) -> None:
    await service.command("new Ship the release notes")
    await service.deliver()  # the card, so the thread exists
    await service.command("assign 1 claude-1")  # its directive and card update not sent yet
    anthropic.script(
        Reply([Text("Drafting."), status("C1#1", "in_progress")]),
        Reply([Text("Ready for review."), status("C1#1", "in_review", "draft in the thread")]),
    )
    await service.service.runner.run_once()
    await finish_runs(service)

    stream_stops = service.standin.calls_to("chat.stopStream")
    assert [c.args.get("session_status") for c in stream_stops] == ["processing", "active"]
    calls = service.standin.calls_to("agents.sessions.setStatus")
    assert calls, "the session was created by setStatus, not left to the streams"
    assert calls[0].args["title"] == "Ship the release notes"
    assert calls[0].args["initiator_user_id"] == ALICE
    task = await service.task(1)
    assert sessions(service, task)[-1] == "active"
