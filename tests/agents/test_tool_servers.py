"""Built-in agents using MCP tool servers during their runs: the real ``mcp-server-git`` on a
temporary repository, the real anthropic SDK against the stand-in, the runtime as the
composition root builds it."""

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.agents import AgentKind, AgentSettings
from bot.root import Overrides, open_service
from bot.status import TaskStatus
from bot.task import Actor, EventKind, Task, TaskEvent
from bot.tool_servers import ToolServerAdd, parse_request
from tests.agents.conftest import ALICE, Runtime, runtime_settings
from tests.agents.standins import AnthropicStandIn, Hang, Reply, Text, ToolUse
from tests.agents.test_runtime import posts, status, tool_results
from tests.agents.tool_servers import (
    COMMITS,
    git_server,
    make_repository,
    process_gone,
    quoted,
    toy_server,
    with_pidfile,
)
from tests.conftest import FakeClock

AGENT = "claude-git"
WAIT_S = 60
#: THREADWORK_TOOL_SERVER_COMMANDS for these runs: the interpreter that runs mcp-server-git, the
#: shell that writes a server's pid first, and a name found on no PATH.
COMMANDS = (sys.executable, "/bin/sh", "no-such-mcp-server")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return make_repository(tmp_path / "repo")


async def open_with_agent(
    database_url: str,
    anthropic: AnthropicStandIn,
    clock: FakeClock,
    commands: tuple[str, ...] = COMMANDS,
    **more: object,
) -> AsyncIterator[Runtime]:
    """The runtime with AGENT registered, the operator permitting ``commands`` (and ``more``
    settings, by field name)."""
    settings = runtime_settings(database_url, anthropic.url).model_copy(
        update={"tool_server_commands": commands, **more}
    )
    overrides = Overrides(clock=clock, port=0, worker="test-runner", run_loops=False)
    async with open_service(settings, overrides) as service:
        rt = Runtime(service, anthropic)
        await rt.core.registry.add_agent(
            AGENT, AgentKind.CLAUDE, settings=AgentSettings(model="claude-standin-1")
        )
        yield rt


@pytest.fixture
async def runtime(
    agents_db: str, anthropic: AnthropicStandIn, clock: FakeClock
) -> AsyncIterator[Runtime]:
    async for rt in open_with_agent(agents_db, anthropic, clock):
        yield rt


async def add_server(rt: Runtime, *words: str) -> None:
    """``agent tools AGENT add ...``, as an admin would type it."""
    request = parse_request(["add", *words])
    assert isinstance(request, ToolServerAdd)
    await rt.core.admin.add_tool_server(Actor.system("test"), AGENT, request)


async def assigned(rt: Runtime) -> Task:
    task = await rt.core.board.create_task("C1", "Summarise the recent commits", Actor.user(ALICE))
    return await rt.core.board.assign_task(task.ref, AGENT, ALICE)


async def events(rt: Runtime, task: Task, kind: EventKind) -> list[TaskEvent]:
    async with rt.core.store.read() as reader:
        return [e for e in await reader.list_events(task.id) if e.kind == kind]


def offered(request_body: dict[str, Any]) -> list[str]:
    return [tool["name"] for tool in request_body["tools"]]


async def settle(rt: Runtime) -> None:
    async with asyncio.timeout(WAIT_S):
        await rt.settle()


async def test_a_built_in_agent_reads_the_repositorys_real_commits_through_git_and_finishes(
    database_url: str, anthropic: AnthropicStandIn, clock: FakeClock, repository: Path
) -> None:
    async for rt in open_with_agent(database_url, anthropic, clock):
        await reads_the_commits_and_finishes(rt, clock, repository)


async def reads_the_commits_and_finishes(rt: Runtime, clock: FakeClock, repository: Path) -> None:
    await add_server(rt, "git", "stdio", quoted(git_server(repository)))
    task = await assigned(rt)
    seen: dict[str, Task] = {}

    async def after_the_log(_body: dict[str, Any]) -> Reply:
        seen["task"] = await rt.task(task)  # the call was liveness, not progress
        return Reply([Text("The last two commits are in."), status(task, "in_review", "ok")])

    def call_the_log(_body: dict[str, Any]) -> Reply:
        clock.advance(120)  # the call happens two minutes after the assignment
        rt.anthropic.responder = after_the_log
        return Reply([ToolUse("git__git_log", {"repo_path": str(repository)})])

    rt.anthropic.responder = call_the_log
    await settle(rt)

    [result] = tool_results(rt.anthropic.requests[1])
    assert result["is_error"] is False
    assert all(message in result["content"] for message in COMMITS)
    assert (await rt.task(task)).status == TaskStatus.IN_REVIEW
    [called] = await events(rt, task, EventKind.TOOL_CALLED)
    assert called.actor == Actor.agent(AGENT)
    assert called.data["tool"] == "git__git_log"
    assert called.data["ok"] is True
    assert called.data["arguments"] == {"repo_path": str(repository)}
    assert isinstance(called.data["duration_ms"], int)
    during = seen["task"]
    assert during.alive_at == clock.now
    assert during.last_progress_at == task.last_progress_at  # the lease was not renewed
    assert {"git__git_log", "update_task_status"} <= set(offered(rt.anthropic.requests[0].body))


async def test_allow_hides_the_servers_other_tools_from_the_model(
    runtime: Runtime, repository: Path
) -> None:
    rt = runtime
    await add_server(rt, "git", "stdio", quoted(git_server(repository)), "allow=git_log")
    task = await assigned(rt)
    rt.anthropic.script(
        Reply([ToolUse("git__git_status", {"repo_path": str(repository)})]),
        Reply([status(task, "in_review", "done")]),
    )
    await settle(rt)
    tools = offered(rt.anthropic.requests[0].body)
    assert [name for name in tools if name.startswith("git__")] == ["git__git_log"]
    [refused] = tool_results(rt.anthropic.requests[1])
    assert refused["is_error"] is True
    assert refused["content"].startswith("invalid: there is no tool `git__git_status`")
    assert await events(rt, task, EventKind.TOOL_CALLED) == []


async def test_a_tool_server_that_does_not_start_is_reported_once_and_the_run_goes_on(
    runtime: Runtime, repository: Path
) -> None:
    rt = runtime
    await add_server(rt, "broken", "stdio", "no-such-mcp-server")
    await add_server(rt, "git", "stdio", quoted(git_server(repository)))
    task = await assigned(rt)
    rt.anthropic.script(
        Reply([ToolUse("git__git_log", {"repo_path": str(repository), "max_count": 1})]),
        Reply([Text("Read the last commit."), status(task, "in_review", "done")]),
    )
    await settle(rt)
    notes = await posts(rt, task)
    assert len(notes) == 2
    assert notes[0].startswith(
        f":warning: `{AGENT}` works on without these tool servers, which did not start:"
    )
    assert "• `broken`: [Errno 2] No such file or directory" in notes[0]
    assert notes[1] == "Read the last commit."
    [result] = tool_results(rt.anthropic.requests[1])
    assert COMMITS[-1] in result["content"]
    assert not any(name.startswith("broken__") for name in offered(rt.anthropic.requests[0].body))
    assert (await rt.task(task)).status == TaskStatus.IN_REVIEW


async def test_a_server_failing_at_every_run_is_reported_once_per_task_and_renews_nothing(
    runtime: Runtime, repository: Path, clock: FakeClock
) -> None:
    """The first run says the server did not start, without renewing the lease; the run after
    the lapse's re-dispatch, with the server failing the same way, says nothing again."""
    rt = runtime
    await add_server(rt, "broken", "stdio", "no-such-mcp-server")
    task = await assigned(rt)
    rt.anthropic.script(Hang())
    await rt.runner.run_once()
    async with asyncio.timeout(WAIT_S):
        await rt.anthropic.until_hung(1)
    [warning] = await posts(rt, task)
    assert "• `broken`:" in warning
    assert (await rt.task(task)).last_progress_at == task.last_progress_at  # not progress
    [told] = await events(rt, task, EventKind.TOOLS_UNAVAILABLE)
    assert list(told.data["failures"]) == ["broken"]

    clock.advance(601)
    report = await rt.core.reconciler.reconcile_stale_tasks()
    assert [str(r) for r in report.redispatched] == [str(task.ref)]
    rt.anthropic.script(Reply([Text("Done without it."), status(task, "in_review", "done")]))
    await settle(rt)

    assert await posts(rt, task) == [warning, "Done without it."]
    assert len(await events(rt, task, EventKind.TOOLS_UNAVAILABLE)) == 1
    final = await rt.task(task)
    assert (final.status, final.attempts) == (TaskStatus.IN_REVIEW, 2)


async def test_the_operators_timeouts_bound_a_servers_start_and_each_call(
    agents_db: str, anthropic: AnthropicStandIn, clock: FakeClock
) -> None:
    """THREADWORK_TOOL_SERVER_START_TIMEOUT and THREADWORK_TOOL_CALL_TIMEOUT, as the service
    reads them: a server that never speaks MCP is reported after the start bound, and a call
    that hangs is answered to the model as timed out after the call bound."""
    silent = ["/bin/sh", "-c", "exec tail -f /dev/null"]
    bounds = {"tool_server_start_timeout": 1.0, "tool_call_timeout": 1.0}
    async for rt in open_with_agent(agents_db, anthropic, clock, **bounds):
        await add_server(rt, "slow", "stdio", quoted(silent))
        await add_server(rt, "toy", "stdio", quoted(toy_server()))
        task = await assigned(rt)
        rt.anthropic.script(
            Reply([ToolUse("toy__hang", {})]),
            Reply([status(task, "in_review", "done without it")]),
        )
        await settle(rt)
        [note] = await posts(rt, task)
        assert "• `slow`: it did not start within 1 s" in note
        [result] = tool_results(rt.anthropic.requests[1])
        assert result["content"] == "toy__hang did not answer within 1 s."
        assert (await rt.task(task)).status == TaskStatus.IN_REVIEW


async def test_a_server_the_operator_no_longer_permits_is_not_started_and_reported_so(
    agents_db: str, anthropic: AnthropicStandIn, clock: FakeClock, repository: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "git.pid"
    async for before in open_with_agent(agents_db, anthropic, clock):
        await add_server(before, "wrapped", "stdio", quoted(with_pidfile(["true"], pidfile)))
        await add_server(before, "git", "stdio", quoted(git_server(repository)))
    async for rt in open_with_agent(agents_db, anthropic, clock, commands=(sys.executable,)):
        task = await assigned(rt)
        rt.anthropic.script(
            Reply([ToolUse("git__git_log", {"repo_path": str(repository), "max_count": 1})]),
            Reply([status(task, "in_review", "done")]),
        )
        await settle(rt)
        [note] = await posts(rt, task)
        assert note == (
            f":warning: `{AGENT}` works on without these tool servers, which did not start:\n"
            "• `wrapped`: the operator does not permit it: /bin/sh is not in "
            "THREADWORK_TOOL_SERVER_COMMANDS"
        )
        assert not pidfile.exists()  # its command never ran
        assert not any(t.startswith("wrapped__") for t in offered(rt.anthropic.requests[0].body))
        [result] = tool_results(rt.anthropic.requests[1])
        assert COMMITS[-1] in result["content"]
        assert (await rt.task(task)).status == TaskStatus.IN_REVIEW


async def test_a_cancelled_run_closes_its_tool_servers_and_leaves_no_process(
    runtime: Runtime, repository: Path, tmp_path: Path
) -> None:
    rt = runtime
    pidfile = tmp_path / "git.pid"
    await add_server(rt, "git", "stdio", quoted(with_pidfile(git_server(repository), pidfile)))
    task = await assigned(rt)
    rt.anthropic.script(Hang())
    await rt.runner.run_once()
    async with asyncio.timeout(WAIT_S):
        await rt.anthropic.until_hung(1)  # the servers are up: the model was asked
    pid = int(pidfile.read_text())
    assert not process_gone(pid)

    await rt.core.board.cancel_task(task.ref, Actor.user(ALICE))
    await rt.runner.run_once()  # sees the task moved on and cancels the run
    async with asyncio.timeout(WAIT_S):
        await rt.supervisor.drain()
    assert process_gone(pid)
    assert (await rt.task(task)).status == TaskStatus.CANCELED


async def test_a_tool_call_made_after_the_run_lost_the_task_never_reaches_the_server(
    runtime: Runtime, repository: Path
) -> None:
    rt = runtime
    await add_server(rt, "git", "stdio", quoted(git_server(repository)))
    task = await assigned(rt)
    branch = {"repo_path": str(repository), "branch_name": "late-branch"}
    rt.anthropic.script(  # blocking ends the run's claim; the call after it comes too late
        Reply([status(task, "blocked", "stuck"), ToolUse("git__git_create_branch", branch)])
    )
    await settle(rt)
    assert not (repository / ".git" / "refs" / "heads" / "late-branch").exists()
    assert await events(rt, task, EventKind.TOOL_CALLED) == []
    assert (await rt.task(task)).status == TaskStatus.BLOCKED
    assert len(rt.anthropic.requests) == 1


async def test_tool_definitions_head_the_cached_prefix_so_later_steps_read_them_from_cache(
    runtime: Runtime, repository: Path
) -> None:
    rt = runtime
    await add_server(rt, "git", "stdio", quoted(git_server(repository)))
    task = await assigned(rt)
    rt.anthropic.script(
        Reply([ToolUse("git__git_log", {"repo_path": str(repository)})]),
        Reply([ToolUse("git__git_branch", {"repo_path": str(repository), "branch_type": "local"})]),
        Reply([status(task, "in_review", "done")]),
    )
    await settle(rt)
    first, *later = rt.anthropic.requests
    assert first.body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    tools_chars = first.cache.boundaries[len(first.body["tools"]) - 1][0]
    assert first.usage is not None
    assert first.usage["cache_read_input_tokens"] == 0
    for request in later:
        assert request.body["tools"] == first.body["tools"]
        assert request.usage is not None
        assert request.usage["cache_read_input_tokens"] * 4 >= tools_chars
        assert request.usage["cache_creation_input_tokens"] * 4 < tools_chars
