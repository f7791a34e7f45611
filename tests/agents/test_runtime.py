"""Built-in Claude agents working tasks on their own, through the real anthropic SDK."""

import asyncio
import json
from typing import Any

import structlog

from bot.agents import AgentKind, AgentSettings
from bot.outbox import OutboxKind
from bot.status import TaskStatus
from bot.task import Actor, EventKind, Task, ThreadMessage
from bot.work import WakeReason
from tests.agents.conftest import ALICE, FALLBACK_KEY, Runtime, open_runtime
from tests.agents.standins import (
    AnthropicStandIn,
    Failure,
    Hang,
    OpenAIStandIn,
    Reply,
    Text,
    ToolUse,
)
from tests.conftest import FakeClock


def status(task: Task, value: str, note: str | None = None) -> ToolUse:
    return ToolUse(
        "update_task_status",
        {"task": str(task.ref), "status": value} | ({"note": note} if note else {}),
    )


async def posts(rt: Runtime, task: Task) -> list[str]:
    rows = await rt.core.store.list_outbox(task.id)
    return [r.payload["text"] for r in rows if r.kind == OutboxKind.AGENT_POST]


async def kinds(rt: Runtime, task: Task) -> list[EventKind]:
    async with rt.core.store.read() as reader:
        return [e.kind for e in await reader.list_events(task.id)]


async def test_an_assigned_claude_agent_works_the_task_to_review_with_no_human_poke(
    runtime: Runtime,
) -> None:
    rt = runtime
    task = await rt.assigned()
    rt.anthropic.script(
        Reply([Text("On it: adding /healthz."), status(task, "in_progress")]),
        Reply(
            [
                ToolUse(
                    "add_artifact",
                    {
                        "task": str(task.ref),
                        "name": "PR",
                        "kind": "pull_request",
                        "uri": "https://git.example/pr/1",
                    },
                )
            ]
        ),
        Reply([Text("Done, the PR is up."), status(task, "in_review", "PR #1")]),
    )
    assert await rt.settle() == 1
    final = await rt.task(task)
    assert final.status == TaskStatus.IN_REVIEW
    assert await posts(rt, task) == [
        "On it: adding /healthz.",
        ":paperclip: Added artifact *PR* (pull_request) <https://git.example/pr/1>",
        "Done, the PR is up.",
    ]
    events = await kinds(rt, task)
    assert events.count(EventKind.STATUS_CHANGED) == 2
    assert EventKind.ARTIFACT_ADDED in events
    async with rt.core.store.read() as reader:
        usage = await reader.get_usage(task.id)
    assert usage is not None
    assert usage.steps == 3
    assert usage.usage.cache_creation_tokens > 0
    assert usage.usage.cache_read_tokens > 0
    assert usage.usage.output_tokens > 0
    first = rt.anthropic.requests[0]
    assert first.api_key == FALLBACK_KEY
    assert first.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert {t["name"] for t in first.body["tools"]} == {
        "list_my_tasks",
        "get_task",
        "post_update",
        "update_task_status",
        "add_artifact",
    }
    assert "Directive: work on task C1#1" in json.dumps(first.body["messages"][0])


async def test_prompt_caching_reads_each_steps_prefix_from_the_cache(runtime: Runtime) -> None:
    rt = runtime
    task = await rt.assigned()
    rt.anthropic.script(
        Reply([ToolUse("post_update", {"task": str(task.ref), "text": "step one"})]),
        Reply([ToolUse("post_update", {"task": str(task.ref), "text": "step two"})]),
        Reply([status(task, "in_review", "done")]),
    )
    await rt.settle()
    second, third = rt.anthropic.requests[1], rt.anthropic.requests[2]
    assert second.usage is not None
    assert third.usage is not None
    assert third.usage["cache_read_input_tokens"] > 0
    assert third.cache.prefix_chars == third.cache.total_chars
    assert second.cache.prefix_hash != third.cache.prefix_hash


async def test_a_question_in_assume_mode_is_answered_with_a_posted_assumption(
    runtime: Runtime,
) -> None:
    rt = runtime
    task = await rt.assigned()
    rt.anthropic.script(
        Reply([Text("Should the check also ping the database?")]),
        Reply([Text("Assuming: yes, a cheap SELECT 1 is part of health.")]),
        Reply([status(task, "in_review", "with a DB ping")]),
    )
    await rt.settle()
    assert await posts(rt, task) == [
        "Should the check also ping the database?",
        "Assuming: yes, a cheap SELECT 1 is part of health.",
    ]
    assert (await rt.task(task)).status == TaskStatus.IN_REVIEW
    assert rt.anthropic.requests[1].body["tools"] == []


async def test_in_wait_mode_the_lease_pauses_until_a_person_replies(
    runtime: Runtime, clock: FakeClock
) -> None:
    rt = runtime
    task = await rt.assigned("claude-waits")
    rt.anthropic.script(Reply([Text("Which region should it deploy to?")]))
    await rt.settle()
    waiting = await rt.task(task)
    assert waiting.awaiting_input_since is not None
    clock.advance(599)
    assert (await rt.core.reconciler.reconcile_stale_tasks()).acted == 0

    reply = ThreadMessage(task.id, "C1", "1767600000.000100", ALICE, "eu-west-1 please", clock.now)
    await rt.core.board.record_thread_message(reply, agent=None)
    resumed = await rt.task(task)
    assert (resumed.awaiting_input_since, resumed.last_progress_at) == (None, clock.now)
    rt.anthropic.script(
        Reply([Text("Deploying to eu-west-1."), status(task, "in_review", "deployed")])
    )
    await rt.settle()
    assert (await rt.task(task)).status == TaskStatus.IN_REVIEW
    assert "eu-west-1 please" in json.dumps(rt.anthropic.requests[-1].body["messages"][0])
    assert EventKind.AWAITING_INPUT in await kinds(rt, task)
    assert EventKind.RESUMED in await kinds(rt, task)


async def test_in_wait_mode_with_no_answer_within_the_ttl_the_agent_assumes(
    runtime: Runtime, clock: FakeClock
) -> None:
    rt = runtime
    task = await rt.assigned("claude-waits")
    rt.anthropic.script(Reply([Text("Blue or green deployment?")]))
    await rt.settle()
    clock.advance(601)
    report = await rt.core.reconciler.reconcile_stale_tasks()
    assert report.acted == 0
    rt.anthropic.script(
        Reply([Text("Assuming: blue/green, the safer choice.")]),
        Reply([status(task, "in_review", "blue/green")]),
    )
    await rt.settle()
    assert (await rt.task(task)).status == TaskStatus.IN_REVIEW
    assert "Assuming: blue/green, the safer choice." in await posts(rt, task)


async def test_a_hung_stream_renews_nothing_and_the_redispatch_cancels_it(
    runtime: Runtime, clock: FakeClock
) -> None:
    rt = runtime
    task = await rt.assigned()
    rt.anthropic.script(Hang())
    await rt.runner.run_once()
    async with asyncio.timeout(10):
        await rt.anthropic.until_hung(1)
    [stuck] = rt.runner.active.values()
    clock.advance(601)
    report = await rt.core.reconciler.reconcile_stale_tasks()
    assert [str(r) for r in report.redispatched] == [str(task.ref)]

    rt.anthropic.script(Reply([status(task, "in_review", "done on the second attempt")]))
    await rt.settle()
    assert stuck.task.cancelled()
    final = await rt.task(task)
    assert (final.status, final.attempts) == (TaskStatus.IN_REVIEW, 2)
    assert "re-dispatch" in json.dumps(rt.anthropic.requests[-1].body["messages"][0])


async def test_cancel_mid_run_stops_it_and_nothing_more_is_posted(runtime: Runtime) -> None:
    rt = runtime
    task = await rt.assigned()
    gate, entered = asyncio.Event(), asyncio.Event()

    async def held(_body: dict[str, Any]) -> Reply:
        entered.set()
        await gate.wait()
        return Reply([Text("more work after the cancel"), status(task, "in_review", "too late")])

    rt.anthropic.script(Reply([Text("first step"), status(task, "in_progress")]))
    rt.anthropic.responder = held
    await rt.runner.run_once()
    async with asyncio.timeout(10):
        await entered.wait()
    await rt.core.board.cancel_task(task.ref, Actor.user(ALICE))
    gate.set()
    async with asyncio.timeout(10):
        await rt.supervisor.drain()
    assert await posts(rt, task) == ["first step"]
    assert (await rt.task(task)).status == TaskStatus.CANCELED
    async with rt.core.store.read() as reader:
        usage = await reader.get_usage(task.id)
    assert usage is not None
    assert usage.steps == 2  # the late answer's tokens were spent, and are counted


async def test_the_sdk_retries_rate_limits_and_overload_then_the_step_succeeds(
    runtime: Runtime,
) -> None:
    rt = runtime
    task = await rt.assigned()
    rt.anthropic.script(
        Failure(429, retry_after=0.01),
        Failure(529, retry_after=0.01),
        Reply([status(task, "in_review", "after retries")]),
    )
    await rt.settle()
    assert (await rt.task(task)).status == TaskStatus.IN_REVIEW
    assert len(rt.anthropic.requests) == 3


async def test_a_model_that_keeps_failing_leaves_a_short_note_and_the_lease_lapses(
    runtime: Runtime,
) -> None:
    rt = runtime
    task = await rt.assigned()
    rt.anthropic.script(*[Failure(529, retry_after=0.01)] * 3)
    await rt.settle()
    [note] = await posts(rt, task)
    assert "could not reach its model (OverloadedError (529))" in note
    current = await rt.task(task)
    assert (current.status, current.claimed_by) == (TaskStatus.TODO, "claude-1")


async def test_a_turn_without_any_update_is_reported_and_the_step_limit_blocks(
    agents_db: str, anthropic: AnthropicStandIn, clock: FakeClock
) -> None:
    async for rt in open_runtime(agents_db, anthropic, clock, max_steps=3):
        from bot.agents import AgentKind

        await rt.core.registry.add_agent("claude-1", AgentKind.CLAUDE)
        task = await rt.assigned()
        anthropic.responder = lambda _body: Reply([])
        await rt.settle()
        final = await rt.task(task)
        assert (final.status, final.claimed_by) == (TaskStatus.BLOCKED, None)
        notes = await posts(rt, task)
        assert notes[:3] == [
            f"_`claude-1` finished a step (#{n}) without an update._" for n in (1, 2, 3)
        ]
        assert "stopped after 3 steps" in notes[-1]


async def test_a_person_writing_during_a_run_reaches_it_at_the_next_step(
    runtime: Runtime, clock: FakeClock
) -> None:
    rt = runtime
    task = await rt.assigned()
    gate, entered = asyncio.Event(), asyncio.Event()

    async def after_gate(_body: dict[str, Any]) -> Reply:
        entered.set()
        await gate.wait()
        return Reply([ToolUse("post_update", {"task": str(task.ref), "text": "noted"})])

    rt.anthropic.responder = after_gate
    await rt.runner.run_once()
    async with asyncio.timeout(10):
        await entered.wait()
    note = ThreadMessage(
        task.id, "C1", "1767600000.000200", ALICE, "also log the version", clock.now
    )
    await rt.core.board.record_thread_message(note, agent=None)
    assert await rt.runner.run_once() == 1
    rt.anthropic.responder = None
    rt.anthropic.script(Reply([status(task, "in_review", "with version")]))
    gate.set()
    async with asyncio.timeout(10):
        await rt.supervisor.drain()
    assert "also log the version" in json.dumps(rt.anthropic.requests[-1].body["messages"])
    assert (await rt.task(task)).status == TaskStatus.IN_REVIEW


async def test_the_agents_own_key_is_used_survives_a_restart_and_is_never_logged(
    agents_db: str, anthropic: AnthropicStandIn, clock: FakeClock, runtime: Runtime
) -> None:
    rt = runtime
    secret = "sk-ant-agent-own-key-42"
    await rt.core.registry.set_api_key("claude-1", secret)
    async for again in open_runtime(agents_db, anthropic, clock):
        task = await again.assigned()
        anthropic.script(Reply([status(task, "in_review", "ok")]))
        with structlog.testing.capture_logs() as logs:
            await again.settle()
        assert anthropic.requests[-1].api_key == secret
        assert secret not in repr(logs)
        [agent] = [a for a in await again.core.registry.list_agents() if a.name == "claude-1"]
        assert agent.api_key_configured is True


async def test_a_hung_stream_still_reports_the_agent_alive_without_renewing_the_lease(
    runtime: Runtime,
) -> None:
    rt = runtime
    task = await rt.assigned()
    rt.anthropic.script(Hang())
    await rt.runner.run_once()
    async with asyncio.timeout(10):
        await rt.anthropic.until_hung(1)
        while (await rt.task(task)).alive_at is None:
            await rt.core.signal.changed()  # the heartbeat's commit
    current = await rt.task(task)
    assert current.alive_at is not None
    assert current.last_progress_at == task.last_progress_at
    assert EventKind.HEARTBEAT in await kinds(rt, task)
    await rt.runner.close()


async def test_an_openai_compatible_agent_works_a_task_through_its_endpoint(
    runtime: Runtime, openai_standin: OpenAIStandIn
) -> None:
    rt = runtime
    await rt.core.registry.add_agent(
        "local-llm",
        AgentKind.OPENAI,
        settings=AgentSettings(model="qwen-standin", base_url=openai_standin.url),
    )
    await rt.core.registry.set_api_key("local-llm", "ollama-key")
    task = await rt.assigned("local-llm")
    openai_standin.script(
        Reply([Text("Starting."), status(task, "in_progress")]),
        Reply([status(task, "in_review", "done locally")]),
    )
    await rt.settle()
    assert (await rt.task(task)).status == TaskStatus.IN_REVIEW
    assert await posts(rt, task) == ["Starting."]
    second = openai_standin.requests[1].body
    assert second["model"] == "qwen-standin"
    assert [m["role"] for m in second["messages"]][:2] == ["system", "user"]
    assert any(m["role"] == "tool" for m in second["messages"])
    assert openai_standin.requests[0].api_key == "ollama-key"


async def test_a_closed_runner_stops_its_loop_and_leaves_new_wakeups_for_the_next_start(
    runtime: Runtime,
) -> None:
    rt = runtime
    loop = asyncio.create_task(rt.runner.run())
    await asyncio.sleep(0)  # the loop makes its first (empty) pass and waits
    await rt.runner.close()
    async with asyncio.timeout(10):
        await asyncio.gather(loop, return_exceptions=True)
    assert loop.cancelled()
    task = await rt.assigned()  # a wake-up arrives during shutdown
    assert await rt.runner.run_once() == 0
    async with rt.core.store.transaction() as unit:
        left = await unit.consume_wakeups("claude-1", rt.core.clock())
    assert [(w.task_id, w.reason) for w in left] == [(task.id, WakeReason.DIRECTIVE)]
