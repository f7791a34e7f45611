"""Built-in Claude agents working tasks on their own, through the real anthropic SDK."""

import asyncio
import json
from typing import Any

import pytest
import structlog

from bot.agents import AgentKind, AgentSettings
from bot.errors import (
    ConfigurationError,
    Conflict,
    DomainError,
    IllegalTransition,
    InvalidInput,
    NotClaimHolder,
    NotFound,
    Superseded,
)
from bot.outbox import OutboxKind
from bot.status import TaskStatus
from bot.task import Actor, EventKind, Task, ThreadMessage
from bot.tools import Done, Refusal, Refused, TaskTools, make_caller_factory, refusal_for
from bot.work import WakeReason
from tests.agents.conftest import ALICE, FALLBACK_KEY, Runtime, open_runtime
from tests.agents.standins import (
    AnthropicStandIn,
    Failure,
    Hang,
    OpenAIStandIn,
    Recorded,
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
    # A built-in run's calls are made in process: no idempotency key to offer the model.
    offered = json.dumps(first.body["tools"])
    assert "idempotency_key" not in offered
    post = next(t for t in first.body["tools"] if t["name"] == "post_update")
    assert {"task", "text", "epoch"} <= set(post["input_schema"]["properties"])
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
    await rt.core.thread_posts.record_thread_message(reply, agent=None)
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
    await rt.core.thread_posts.record_thread_message(note, agent=None)
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


def tool_results(request: Recorded) -> list[dict[str, Any]]:
    """The tool_result blocks a request sent back to the model for its previous turn."""
    content = request.body["messages"][-1]["content"]
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


async def test_a_refused_tool_call_reaches_the_model_as_an_error_starting_with_its_reason(
    runtime: Runtime,
) -> None:
    rt = runtime
    task = await rt.assigned()
    rt.anthropic.script(
        Reply([status(task, "in_progress")]),
        Reply([status(task, "done")]),
        Reply([ToolUse("get_task", {"task": 7}), ToolUse("wait_for_work", {"timeout_s": 1})]),
        Reply([status(task, "in_review", "PR up")]),
    )
    assert await rt.settle() == 1
    [moved] = tool_results(rt.anthropic.requests[1])
    assert moved["is_error"] is False
    assert json.loads(moved["content"])["status"] == "in_progress"
    [done] = tool_results(rt.anthropic.requests[2])
    assert done["is_error"] is True
    assert done["content"].startswith("not_allowed: Only a person can mark a task done")
    bad_argument, unknown = tool_results(rt.anthropic.requests[3])
    assert (bad_argument["is_error"], unknown["is_error"]) == (True, True)
    assert bad_argument["content"].startswith("invalid: bad arguments for get_task (task: ")
    assert unknown["content"].startswith("invalid: there is no tool `wait_for_work`")
    assert (await rt.task(task)).status == TaskStatus.IN_REVIEW


def reworded(self: DomainError, message: str) -> None:
    """DomainError.__init__ with every message replaced, so no caller can rely on its wording."""
    Exception.__init__(self, "lorem ipsum")
    self.message = "lorem ipsum"


#: Who holds the task once it moves on: the same agent at a newer epoch (the run is superseded),
#: or another agent (the run no longer holds the claim).
MOVES = {"re-dispatched": "claude-1", "reassigned": "cursor-bot"}


@pytest.mark.parametrize("wording", ["as worded", "reworded"])
@pytest.mark.parametrize("move", sorted(MOVES))
@pytest.mark.parametrize("late", ["tool-call", "text"])
async def test_a_run_whose_task_moves_on_after_its_model_call_stops_and_posts_nothing_more(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, move: str, wording: str, late: str
) -> None:
    rt = runtime
    await rt.core.registry.add_agent("cursor-bot")
    other = await rt.assigned(title="Another task the agent holds")
    async with rt.core.store.transaction() as unit:
        await unit.consume_wakeups("claude-1", rt.core.clock())  # no run for the other task
    task = await rt.assigned()
    if wording == "reworded":
        monkeypatch.setattr(DomainError, "__init__", reworded)
    record_usage, steps = rt.core.work.record_usage, 0

    async def moves_on_after_the_second_step(*args: Any) -> bool:
        """The second step's usage check passes; then, before its calls, the task moves on."""
        nonlocal steps
        holding = await record_usage(*args)
        steps += 1
        if steps == 2:
            await rt.core.board.assign_task(task.ref, MOVES[move], ALICE)
        return holding

    monkeypatch.setattr(rt.core.work, "record_usage", moves_on_after_the_second_step)
    elsewhere = ToolUse("post_update", {"task": str(other.ref), "text": "after being stopped"})
    first = (
        ToolUse("post_update", {"task": str(task.ref), "text": "more work"})
        if late == "tool-call"
        else Text("more work")
    )
    rt.anthropic.script(
        Reply([Text("first step"), status(task, "in_progress")]),
        Reply([first, elsewhere]),
        Reply([status(task, "in_review", "too late")]),
    )
    with structlog.testing.capture_logs() as logs:
        await rt.settle()
    assert [e["outcome"] for e in logs if e["event"] == "run.finished"] == ["stopped"]
    assert "run.post_refused" not in [e["event"] for e in logs]
    assert await posts(rt, task) == ["first step"]
    assert await posts(rt, other) == []
    assert len(rt.anthropic.requests) == 2
    current = await rt.task(task)
    assert (current.status, current.claimed_by, current.lease_epoch) == (
        TaskStatus.IN_PROGRESS,
        MOVES[move],
        task.lease_epoch + 1,  # the next epoch from the counter all tasks share
    )


@pytest.mark.parametrize("wording", ["as worded", "reworded"])
@pytest.mark.parametrize("move", sorted(MOVES))
async def test_a_run_whose_task_moved_on_before_it_read_it_stops_before_asking_its_model(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, move: str, wording: str
) -> None:
    rt = runtime
    await rt.core.registry.add_agent("cursor-bot")
    task = await rt.assigned()
    if wording == "reworded":
        monkeypatch.setattr(DomainError, "__init__", reworded)
    get_api_key = rt.core.registry.get_api_key

    async def moves_on_while_the_runner_looks_up_the_key(agent: str) -> str | None:
        """The runner has read the task at epoch 1; then, before the run starts, it moves on."""
        await rt.core.board.assign_task(task.ref, MOVES[move], ALICE)
        return await get_api_key(agent)

    monkeypatch.setattr(rt.core.registry, "get_api_key", moves_on_while_the_runner_looks_up_the_key)
    with structlog.testing.capture_logs() as logs:
        assert await rt.settle() == 1
    assert [e["outcome"] for e in logs if e["event"] == "run.finished"] == ["stopped"]
    assert rt.anthropic.requests == []
    assert await posts(rt, task) == []
    current = await rt.task(task)
    assert (current.claimed_by, current.lease_epoch) == (MOVES[move], task.lease_epoch + 1)


def tools_of(rt: Runtime, agent: str = "claude-1", epoch: int | None = None) -> TaskTools:
    """The tool set as ``agent`` sees it in-process, as the runner builds it for a run."""
    core = rt.core
    return make_caller_factory(core.store, core.board, core.work, core.clock, core.signal)(
        agent, epoch
    )


@pytest.mark.parametrize("name", ["wait_for_work", "no_such_tool", "call", "_refs"])
async def test_an_in_process_call_of_a_tool_the_runtime_does_not_offer_is_invalid(
    runtime: Runtime, name: str
) -> None:
    result = await tools_of(runtime).call(name, {"timeout_s": 0, "task_ids": set()})
    assert isinstance(result, Refused)
    assert result.reason == Refusal.INVALID
    assert result.message.startswith(f"there is no tool `{name}`; use one of list_my_tasks")


@pytest.mark.parametrize(
    ("name", "arguments", "says"),
    [
        ("get_task", {"task": 7}, "task: Input should be a valid string"),
        ("get_task", {}, "task: Missing required argument"),
        ("post_update", {"task": "C1#1", "text": "hi", "colour": "red"}, "colour: Unexpected"),
        ("update_task_status", {"task": "C1#1", "status": "todo", "epoch": "soon"}, "epoch: "),
    ],
    ids=["wrong-type", "missing", "unexpected", "unparsable"],
)
async def test_an_in_process_call_with_a_bad_argument_is_invalid_and_names_it(
    runtime: Runtime, name: str, arguments: dict[str, Any], says: str
) -> None:
    rt = runtime
    task = await rt.assigned()
    result = await tools_of(rt).call(name, arguments)
    assert isinstance(result, Refused)
    assert result.reason == Refusal.INVALID
    assert result.message.startswith(f"bad arguments for {name} (")
    assert says in result.message
    assert await posts(rt, task) == []
    assert (await rt.task(task)).status == TaskStatus.TODO


async def test_an_in_process_call_on_a_task_the_agent_does_not_hold_is_not_claimed(
    runtime: Runtime,
) -> None:
    rt = runtime
    task = await rt.assigned("claude-waits")
    arguments = {"task": str(task.ref), "text": "mine now", "epoch": task.lease_epoch}
    result = await tools_of(rt).call("post_update", arguments)
    assert result == Refused(
        Refusal.NOT_CLAIMED, "C1#1 is not claimed by `claude-1`; only its assignee can change it."
    )
    assert await posts(rt, task) == []


async def test_an_in_process_call_from_a_replaced_epoch_is_superseded(runtime: Runtime) -> None:
    rt = runtime
    task = await rt.assigned()
    await rt.core.board.assign_task(task.ref, "claude-1", ALICE)
    result = await tools_of(rt, epoch=1).call(
        "update_task_status", {"task": str(task.ref), "status": "in_progress"}
    )
    assert isinstance(result, Refused)
    assert result.reason == Refusal.SUPERSEDED
    assert "epoch 1 of C1#1 was replaced by epoch 2" in result.message
    assert (await rt.task(task)).status == TaskStatus.TODO


async def test_an_in_process_status_call_with_another_epoch_than_the_runs_is_superseded(
    runtime: Runtime,
) -> None:
    rt = runtime
    task = await rt.assigned()
    arguments = {"task": str(task.ref), "status": "in_progress", "epoch": 7}
    result = await tools_of(rt, epoch=1).call("update_task_status", arguments)
    assert result == Refused(Refusal.SUPERSEDED, "this run holds epoch 1, not 7.")
    assert result.text == "superseded: this run holds epoch 1, not 7."
    assert (await rt.task(task)).status == TaskStatus.TODO


async def test_an_in_process_call_on_a_missing_task_is_not_found(runtime: Runtime) -> None:
    result = await tools_of(runtime).call("get_task", {"task": "C1#99"})
    assert result == Refused(Refusal.NOT_FOUND, "There is no task C1#99.")


async def test_a_successful_in_process_call_is_done_with_the_tools_data(runtime: Runtime) -> None:
    rt = runtime
    task = await rt.assigned()
    tools = tools_of(rt, epoch=1)
    moved = await tools.call("update_task_status", {"task": str(task.ref), "status": "in_progress"})
    assert isinstance(moved, Done)
    assert (moved.data["ref"], moved.data["status"], moved.data["epoch"]) == (
        "C1#1",
        "in_progress",
        1,
    )
    mine = await tools.call("list_my_tasks", {})
    assert isinstance(mine, Done)
    assert [t["ref"] for t in mine.data["tasks"]] == ["C1#1"]
    assert json.loads(json.dumps(mine.data)) == mine.data
    assert (await rt.task(task)).status == TaskStatus.IN_PROGRESS


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (Superseded, Refusal.SUPERSEDED),
        (NotClaimHolder, Refusal.NOT_CLAIMED),
        (NotFound, Refusal.NOT_FOUND),
        (IllegalTransition, Refusal.NOT_ALLOWED),
        (InvalidInput, Refusal.INVALID),
        (Conflict, Refusal.CONFLICT),
        (ConfigurationError, Refusal.NOT_ALLOWED),
        (DomainError, Refusal.NOT_ALLOWED),
    ],
)
def test_each_domain_error_is_refused_for_the_reason_of_its_class_whatever_it_says(
    error: type[DomainError], reason: Refusal
) -> None:
    misleading = "superseded: not claimed by anyone, not found, invalid"
    assert refusal_for(error(misleading)) == Refused(reason, misleading)
    assert refusal_for(error("it changed")).text == f"{reason}: it changed"


async def test_a_refusal_about_another_task_is_told_to_the_model_and_the_run_goes_on(
    runtime: Runtime,
) -> None:
    rt = runtime
    await rt.core.registry.add_agent("outsider")  # external: no run of its own
    mine = await rt.assigned("claude-1", "Mine")
    theirs = await rt.assigned("outsider", "Someone else's")
    rt.anthropic.script(
        Reply([ToolUse("post_update", {"task": str(theirs.ref), "text": "Hijack"})]),
        Reply([status(theirs, "in_review")]),
        Reply([Text("Back to my own."), status(mine, "in_review", "done")]),
    )
    assert await rt.runner.run_once() == 1
    [handle] = rt.runner.active.values()
    assert await handle.task == "in_review"
    assert (await rt.task(mine)).status == TaskStatus.IN_REVIEW
    assert (await rt.task(theirs)).status == TaskStatus.TODO
    assert await posts(rt, theirs) == []
    results = [
        block
        for request in rt.anthropic.requests
        for message in request.body["messages"]
        if message["role"] == "user" and isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]
    refused = [str(r["content"]) for r in results if r.get("is_error")]
    assert any(text.startswith("not_allowed:") for text in refused)


async def test_a_runs_tools_refuse_any_other_task_before_reading_it(runtime: Runtime) -> None:
    rt = runtime
    mine = await rt.assigned()
    other = await rt.assigned(title="Held by the same agent, not this run's")
    pinned = rt.core.tools_for("claude-1", mine.lease_epoch, mine.ref)
    for name, arguments in [
        ("get_task", {"task": str(other.ref)}),
        ("post_update", {"task": str(other.ref), "text": "leak"}),
        ("update_task_status", {"task": str(other.ref), "status": "in_review"}),
        ("add_artifact", {"task": str(other.ref), "name": "x", "kind": "log", "content": "y"}),
    ]:
        result = await pinned.call(name, arguments)
        assert isinstance(result, Refused), name
        assert result.reason == Refusal.NOT_ALLOWED, result
        assert str(other.ref) in result.message
    listed = await pinned.call("list_my_tasks", {})
    assert isinstance(listed, Done)
    assert [t["ref"] for t in listed.data["tasks"]] == [str(mine.ref)]
    assert await posts(rt, other) == []
    assert (await rt.task(other)).status == TaskStatus.TODO


async def test_an_external_agents_write_without_an_epoch_is_refused_and_says_how(
    runtime: Runtime,
) -> None:
    rt = runtime
    await rt.core.registry.add_agent("cursor-bot")
    task = await rt.assigned("cursor-bot")
    external = rt.core.tools_for("cursor-bot")
    for name, arguments in [
        ("post_update", {"task": str(task.ref), "text": "hello"}),
        ("update_task_status", {"task": str(task.ref), "status": "in_progress"}),
        ("add_artifact", {"task": str(task.ref), "name": "x", "kind": "log", "content": "y"}),
    ]:
        result = await external.call(name, arguments)
        assert isinstance(result, Refused)
        assert (result.reason, "call get_task" in result.message) == (Refusal.INVALID, True)
    stale = await external.call(
        "post_update", {"task": str(task.ref), "text": "hi", "epoch": task.lease_epoch - 1}
    )
    assert isinstance(stale, Refused)
    assert stale.reason == Refusal.SUPERSEDED
    fenced = await external.call(
        "post_update", {"task": str(task.ref), "text": "hi", "epoch": task.lease_epoch}
    )
    assert isinstance(fenced, Done)
