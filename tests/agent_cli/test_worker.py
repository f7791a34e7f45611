"""``threadwork worker`` as a real process against a real ``threadwork serve``, running the
scripted fake CLI (``fake_cli.py``) on dispatched tasks.

One service runs for the module; each test has its own channel, agent and worker. People act
through signed slash commands and card clicks; what the fake CLI saw and did comes from its
records, what threadwork made of it from the core and the Slack stand-in. Every wait polls
against a deadline and fails with the service's and the workers' logs.
"""

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.status import TaskStatus
from bot.task import EventKind, TaskRef
from channels.agent_cli.process import group_alive
from tests.agent_cli.rig import Rig, WorkerProcess, fake_cli, open_rig
from tests.processes import ADMIN, THREADWORK

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Agents and channels, one of each per test.
AGENTS = [
    "coder-work",
    "coder-fail",
    "coder-late",
    "coder-hang",
    "coder-move",
    "coder-new",
    "coder-stop",
    "coder-two",
    "coder-up",
    "coder-kill",
    "coder-term",
]
CHANNELS = ["CWORK", "CFAIL", "CLATE", "CHANG", "CMOVE", "CSTOP", "CTWO", "CUP", "CKILL", "CTERM"]
#: The kill -9 test's channel lets a lease lapse after 3 s without progress.
KILL_TTL_S = 3.0
TIMEOUT_S = 30.0
#: The issue's bound: from the change to the command's whole process group gone.
GONE_WITHIN_S = 5.0
#: Every attempt, while it runs, is checked this often for a task that moved on.
CHECK = ("--check-every", "1")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    directory = tmp_path_factory.mktemp("worker")
    async with open_rig(directory, AGENTS, CHANNELS, {"CKILL": KILL_TTL_S}) as rig:
        yield rig


async def status_is(rig: Rig, ref: str, status: TaskStatus) -> bool | None:
    return True if (await rig.detail(ref)).task.status == status else None


async def recorded(rig: Rig, worker: WorkerProcess, ref: str, event: str) -> dict[str, Any]:
    """The fake CLI's first ``event`` record for ``ref``, once there is one."""

    async def found() -> dict[str, Any] | None:
        events = worker.events(ref, event)
        return events[0] if events else None

    return await rig.wait_for(found, TIMEOUT_S, f"the fake CLI's {event} on {ref}")


async def gone(rig: Rig, pgid: int, what: str) -> float:
    """Waits until no process of group ``pgid`` is left; returns when (time.monotonic())."""

    async def ended() -> float | None:
        return None if group_alive(pgid) else time.monotonic()

    return await rig.wait_for(ended, TIMEOUT_S, what)


def thread_texts(rig: Rig, channel: str) -> list[str]:
    """What threadwork posted in ``channel``, in order."""
    return [str(m.get("text", "")) for m in rig.slack.posts(channel)]


async def post_in(rig: Rig, channel: str, contains: str) -> str:
    """The first post in ``channel`` containing ``contains``, once Slack has it: the outbox
    delivers after the task's state is committed, so a post can trail the status."""

    async def found() -> str | None:
        return next((t for t in thread_texts(rig, channel) if contains in t), None)

    return await rig.wait_for(found, TIMEOUT_S, f"a post saying {contains!r} in {channel}")


async def kinds(rig: Rig, ref: str) -> list[EventKind]:
    return [e.kind for e in (await rig.detail(ref)).events]


async def test_a_dispatched_task_runs_in_its_worktree_and_ends_in_review_with_the_branch(
    rig: Rig,
) -> None:
    worker = await rig.worker("coder-work", fake_cli("work"))
    ref = await rig.assigned("CWORK", "coder-work", "Make the build green")

    await rig.wait_for(lambda: status_is(rig, ref, TaskStatus.IN_REVIEW), TIMEOUT_S, "in_review")

    started = worker.events(ref, "started")[0]
    worked = worker.events(ref, "worked")[0]
    detail = await rig.detail(ref)
    assert started["branch"] == "threadwork/CWORK-1"
    assert Path(started["cwd"]) == rig.repo / ".git" / "threadwork-worktrees" / "CWORK-1"
    assert_given_prompt_and_config(rig, started, "coder-work", detail.task.lease_epoch)
    # The script's own calls (post, in_progress) went through; the worker did the rest.
    assert (worked["posted"], worked["moved"]) == ("ok", "ok")
    [artifact] = detail.artifacts
    assert (artifact.name, artifact.kind) == ("threadwork/CWORK-1", "git")
    assert artifact.content == f"branch: threadwork/CWORK-1\ncommit: {worked['head']}\n"
    branch_head = git(rig.repo, "rev-parse", "threadwork/CWORK-1")
    assert branch_head == worked["head"]
    assert git(rig.repo, "status", "--porcelain") == ""  # the checkout itself is untouched
    moves = [(e.data["to"], str(e.actor)) for e in detail.events if e.kind == "status_changed"]
    assert moves == [("in_progress", "agent:coder-work"), ("in_review", "agent:coder-work")]
    summary = await post_in(rig, "CWORK", "finished (exit 0)")
    texts = thread_texts(rig, "CWORK")
    program = Path(fake_cli("work")[0]).name  # python or python3, as the venv names it
    assert any(f"Started `{program}`" in t and "threadwork/CWORK-1" in t for t in texts)
    assert any("fake-cli: on it" in t for t in texts)
    assert [t for t in texts if "finished (exit 0)" in t] == [summary]
    assert "step 3 of 3" in summary
    assert "all done" in summary
    assert rig.tokens["coder-work"] not in worker.output()  # the token is never printed


def assert_given_prompt_and_config(
    rig: Rig, started: dict[str, Any], agent: str, epoch: int
) -> None:
    """The prompt on stdin and in THREADWORK_PROMPT, and the generated MCP configuration."""
    assert "CWORK#1: Make the build green" in started["prompt"]
    assert f"epoch={epoch}" in started["prompt"]
    assert started["prompt_env"] == started["prompt"]
    url = rig.replicas[0].url + "/mcp"
    assert started["config"] == {
        "mcpServers": {
            "threadwork": {
                "type": "http",
                "url": url,
                "headers": {"Authorization": f"Bearer {rig.tokens[agent]}"},
            }
        }
    }
    assert (started["config_mode"], started["mcp_url"], started["token_set"]) == (0o600, url, True)


async def test_a_failing_command_blocks_the_task_with_its_exit_code_and_output_tail(
    rig: Rig,
) -> None:
    await rig.worker("coder-fail", fake_cli("fail"), "--workdir", str(rig.directory / "work"))
    ref = await rig.assigned("CFAIL", "coder-fail")

    await rig.wait_for(lambda: status_is(rig, ref, TaskStatus.BLOCKED), TIMEOUT_S, "blocked")

    detail = await rig.detail(ref)
    [blocked] = [e for e in detail.events if e.kind == EventKind.BLOCKED]
    program = Path(fake_cli("fail")[0]).name
    assert blocked.data["note"] == f"`{program}` exited with code 3"
    [artifact] = detail.artifacts
    assert (artifact.name, artifact.kind) == ("output tail", "log")
    assert artifact.content == "compiling\nerror: the flux capacitor is missing"
    failure = await post_in(rig, "CFAIL", ":x:")
    assert failure.startswith(":x:")
    assert "exited with code 3" in failure
    assert "error: the flux capacitor is missing" in failure


async def test_a_command_that_moved_its_task_to_review_then_failed_leaves_it_in_review(
    rig: Rig,
) -> None:
    worker = await rig.worker("coder-late", fake_cli("review_then_fail"))
    ref = await rig.assigned("CLATE", "coder-late")
    reviewed = await recorded(rig, worker, ref, "reviewed")
    assert reviewed["moved"] == ["ok", "ok"]

    posted = await post_in(rig, "CLATE", ":x:")

    assert "exited with code 4" in posted
    assert "handed over, then crashed" in posted
    detail = await rig.detail(ref)
    assert detail.task.status == TaskStatus.IN_REVIEW
    assert not [e for e in detail.events if e.kind == EventKind.BLOCKED]


async def test_a_hanging_command_shows_its_output_tail_and_its_group_is_gone_within_5s_of_cancel(
    rig: Rig,
) -> None:
    worker = await rig.worker("coder-hang", fake_cli("hang"), *CHECK)
    ref = await rig.assigned("CHANG", "coder-hang")
    started = await recorded(rig, worker, ref, "started")
    hanging = await recorded(rig, worker, ref, "hanging")

    async def tail_shown() -> str | None:
        return (await rig.detail(ref)).task.current_output_tail

    assert await rig.wait_for(tail_shown, TIMEOUT_S, "the output tail") == "waiting forever"
    await rig.wait_for(
        lambda: card_shows(rig, "waiting forever"), TIMEOUT_S, "the tail on the card"
    )
    assert "waiting forever" in await rig.command(f"show {TaskRef.parse(ref).number}", "CHANG")
    shown = await cli_json("tasks", "show", ref, "--json", database_url=rig.replicas.database_url)
    assert shown["output_tail"] == "waiting forever"
    task = (await rig.detail(ref)).task
    assert task.alive_at is not None
    assert task.last_progress_at is not None
    assert task.alive_at > task.last_progress_at  # liveness is not progress: the start line was

    await rig.command(f"cancel {TaskRef.parse(ref).number}", "CHANG")
    canceled = time.monotonic()
    ended = await gone(rig, started["pgid"], "the hanging command's group gone")

    assert ended - canceled < GONE_WITHIN_S
    assert not pid_alive(hanging["child"])  # its child went with it
    late = await recorded(rig, worker, ref, "late_call")
    assert late["answer"].startswith("not_claimed")
    assert not any("a late word" in t for t in thread_texts(rig, "CHANG"))
    assert worker.process.returncode is None  # the worker goes on


async def test_a_reassignment_mid_run_kills_the_command_and_its_late_calls_are_refused(
    rig: Rig,
) -> None:
    worker = await rig.worker("coder-move", fake_cli("hang"), *CHECK)
    ref = await rig.assigned("CMOVE", "coder-move")
    started = await recorded(rig, worker, ref, "started")
    await recorded(rig, worker, ref, "hanging")

    number = TaskRef.parse(ref).number
    assert "Assigned" in await rig.command(f"assign {number} coder-new", "CMOVE", user=ADMIN)
    moved = time.monotonic()
    ended = await gone(rig, started["pgid"], "the reassigned command's group gone")

    assert ended - moved < GONE_WITHIN_S
    late = await recorded(rig, worker, ref, "late_call")
    assert late["answer"].startswith("not_claimed")
    task = (await rig.detail(ref)).task
    assert (task.assignee, task.claimed_by, task.status) == ("coder-new", "coder-new", "todo")
    assert not any("a late word" in t for t in thread_texts(rig, "CMOVE"))


async def test_a_stop_pressed_on_the_card_kills_the_command_and_its_late_calls_are_superseded(
    rig: Rig,
) -> None:
    worker = await rig.worker("coder-stop", fake_cli("hang"))  # the stop item, no check needed
    ref = await rig.assigned("CSTOP", "coder-stop")
    started = await recorded(rig, worker, ref, "started")
    await recorded(rig, worker, ref, "hanging")

    await rig.press("task_stop", ref)
    pressed = time.monotonic()
    ended = await gone(rig, started["pgid"], "the stopped command's group gone")

    assert ended - pressed < GONE_WITHIN_S
    late = await recorded(rig, worker, ref, "late_call")
    assert late["answer"].startswith("superseded")
    assert (await rig.detail(ref)).task.status == TaskStatus.BLOCKED


async def test_with_concurrency_2_two_tasks_run_at_once_each_in_its_own_directory(
    rig: Rig,
) -> None:
    workdir = rig.directory / "together"
    worker = await rig.worker(
        "coder-two", fake_cli("together"), "--concurrency", "2", "--workdir", str(workdir)
    )
    refs = [await rig.assigned("CTWO", "coder-two", f"Task {n}") for n in (1, 2)]

    for ref in refs:
        await rig.wait_for(lambda r=ref: status_is(rig, r, TaskStatus.IN_REVIEW), TIMEOUT_S, ref)

    for ref, n in zip(refs, (1, 2), strict=True):
        assert worker.events(ref, "together"), f"{ref} never ran alongside the other"
        assert worker.events(ref, "started")[0]["cwd"] == str(workdir / f"CTWO-{n}")
        assert (await rig.detail(ref)).artifacts == []  # no worktree, no branch


async def test_the_worker_survives_the_service_restarting_and_says_so_once(rig: Rig) -> None:
    worker = await rig.worker("coder-up", fake_cli("work"))
    first = await rig.assigned("CUP", "coder-up", "Before the restart")
    await rig.wait_for(lambda: status_is(rig, first, TaskStatus.IN_REVIEW), TIMEOUT_S, "first")

    assert await rig.replicas.stop(0) == 0
    await rig.wait_for(
        lambda: logged(worker, "worker.service_away"), TIMEOUT_S, "the worker noticed"
    )
    await rig.replicas.start(0, same_port=True)
    second = await rig.assigned("CUP", "coder-up", "After the restart")

    await rig.wait_for(lambda: status_is(rig, second, TaskStatus.IN_REVIEW), TIMEOUT_S, "second")
    log = worker.output()
    assert log.count("worker.service_away") == 1
    assert log.count("worker.service_back") == 1
    assert worker.process.returncode is None


async def test_after_kill_9_the_lease_lapses_and_a_new_worker_resumes_in_the_same_worktree(
    rig: Rig,
) -> None:
    crashed = await rig.worker("coder-kill", fake_cli("resume"))
    ref = await rig.assigned("CKILL", "coder-kill")
    first = await recorded(rig, crashed, ref, "started")

    await crashed.kill()
    await gone(rig, first["pgid"], "the killed worker's command group gone")
    records = rig.directory / "records-kill"
    resumed_by = await rig.worker("coder-kill", fake_cli("resume"), records=records)

    await rig.wait_for(lambda: status_is(rig, ref, TaskStatus.IN_REVIEW), TIMEOUT_S, "in_review")
    second = resumed_by.events(ref, "started")[0]
    assert second["epoch"] > first["epoch"]
    assert second["cwd"] == first["cwd"]  # the same worktree, as the first attempt left it
    assert resumed_by.events(ref, "resumed")[0]["marker"] == f"left by epoch {first['epoch']}\n"
    assert EventKind.REDISPATCHED in await kinds(rig, ref)


async def test_sigterm_stops_the_commands_releases_the_tasks_and_another_worker_takes_them_at_once(
    rig: Rig,
) -> None:
    leaving = await rig.worker("coder-term", fake_cli("hang"))
    ref = await rig.assigned("CTERM", "coder-term")
    started = await recorded(rig, leaving, ref, "started")
    await recorded(rig, leaving, ref, "hanging")

    assert await leaving.stop() == 0

    assert not group_alive(started["pgid"])
    detail = await rig.detail(ref)
    [released] = [e for e in detail.events if e.kind == EventKind.RELEASED]
    assert released.data["epoch"] == started["epoch"]
    assert detail.task.lease_epoch == released.data["new_epoch"]
    assert (detail.task.claimed_by, detail.task.attempts) == ("coder-term", 1)
    taking = await rig.worker("coder-term", fake_cli("work"), records=rig.directory / "taken")
    await rig.wait_for(lambda: status_is(rig, ref, TaskStatus.IN_REVIEW), TIMEOUT_S, "in_review")
    assert taking.events(ref, "started")[0]["epoch"] == released.data["new_epoch"]
    assert EventKind.REDISPATCHED not in await kinds(rig, ref)  # no lease had to lapse


async def test_a_token_the_service_refuses_stops_the_worker_with_exit_code_2(rig: Rig) -> None:
    worker = await rig.worker("coder-work", fake_cli("work"), token="tw-not-a-token-at-all")
    worker.ending = True  # it is meant to exit
    async with asyncio.timeout(TIMEOUT_S):
        code = await worker.process.wait()
    assert code == 2, worker.output()
    assert "worker.token_refused" in worker.output()
    assert "tw-not-a-token-at-all" not in worker.output()


async def card_shows(rig: Rig, text: str) -> bool | None:
    """Whether a card update sent to Slack shows ``text``."""
    for call in rig.slack.calls_to("chat.update"):
        if text in json.dumps(call.args.get("blocks", [])):
            return True
    return None


async def logged(worker: WorkerProcess, event: str) -> bool | None:
    return True if event in worker.output() else None


async def cli_json(*args: str, database_url: str) -> Any:
    env = {"PATH": os.environ.get("PATH", os.defpath), "DATABASE_URL": database_url}
    process = await asyncio.create_subprocess_exec(
        str(THREADWORK), *args, env=env, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(TIMEOUT_S):
        out, _ = await process.communicate()
    assert process.returncode == 0
    return json.loads(out)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)  # noqa: S603, S607 - fixed arguments
    return done.stdout.strip()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
