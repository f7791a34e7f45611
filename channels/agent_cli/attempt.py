"""One dispatch attempt: the command runs once, in the task's working directory, and its end is
reported.

The attempt reads the task (``get_task``), prepares the working directory, posts a start line
and starts the command with the prompt on stdin. While it runs, a liveness heartbeat carries
the last lines of output (at most every 15 s; never progress, so a silent or looping command
is still caught by the lease). At its end: exit 0 with the task still under its lease posts the
last lines as a summary, attaches the branch and moves the task to in_review; a non-zero exit
attaches the output tail and blocks the task with the exit code (or only posts the tail, when
the command moved the task out of its leased statuses itself). A task that moved on (a
refusal, or the worker's check) or a worker shutting down stops the command's whole group; at
a shutdown the attempt is then released, so the task is dispatched again at once.
"""

import asyncio
import contextlib
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog

from bot.status import LEASED_STATUSES
from bot.task import TaskRef
from bot.tools import Done, Refusal, Refused, ToolResult
from channels.agent_cli.briefs import Held, TaskBrief, brief, held_tasks, prompt
from channels.agent_cli.link import Link, keyed
from channels.agent_cli.process import CommandProcess, OutputTail
from channels.agent_cli.workspaces import Workspace, WorkspaceError, Workspaces

logger = structlog.get_logger(__name__)

#: Liveness is reported at most this often (the first report goes with the first output).
LIVENESS_EVERY_S = 15.0
#: What a liveness report, the summary and the failure tail's artifact keep of the output.
LIVENESS_LINES, LIVENESS_CHARS = 15, 2000
SUMMARY_LINES, SUMMARY_CHARS = 20, 3000
ARTIFACT_LINES, ARTIFACT_CHARS = 200, 100_000
#: Refusals that mean the attempt no longer holds the task.
MOVED_ON = frozenset({Refusal.SUPERSEDED, Refusal.NOT_CLAIMED, Refusal.NOT_FOUND})
#: Refusals worth a second try, after a pause.
RETRY = frozenset({Refusal.CONFLICT, Refusal.RATE_LIMITED})
RETRY_PAUSE_S, RETRIES = 2.0, 5
MAX_PROMPT_ENV_CHARS = 100_000


class Stop(StrEnum):
    """Why the worker stops an attempt's command."""

    #: Stopped, canceled, reassigned or superseded: the attempt reports nothing more.
    MOVED_ON = "moved_on"
    #: The worker is shutting down: the task is released after the command is gone.
    SHUTDOWN = "shutdown"


class Ending(StrEnum):
    """How an attempt ended."""

    #: The command exited 0; the worker posted the summary and moved the task to in_review.
    REVIEW = "review"
    #: The command exited non-zero; the worker blocked the task with the exit code.
    BLOCKED = "blocked"
    #: The command moved the task on itself (or the task moved on before it started).
    LEFT = "left"
    #: The task moved on while the command ran; it was stopped.
    MOVED_ON = "moved_on"
    #: The worker shut down; the command was stopped and the task released.
    RELEASED = "released"


@dataclass(frozen=True)
class Command:
    """What every attempt runs: the argv, the environment it adds, and its name in posts."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    name: str


class Attempt:
    """Runs ``command`` once for ``ref`` at ``epoch``; ``stop`` ends it early."""

    def __init__(
        self,
        ref: TaskRef,
        epoch: int,
        link: Link,
        workspaces: Workspaces,
        command: Command,
    ) -> None:
        self.ref, self.epoch = ref, epoch
        self._link = link
        self._workspaces = workspaces
        self._command = command
        self._stop: asyncio.Future[Stop] = asyncio.get_running_loop().create_future()
        self.process: CommandProcess | None = None

    def stop(self, why: Stop) -> None:
        """Asks the attempt to end its command (the first reason given wins)."""
        if not self._stop.done():
            self._stop.set_result(why)

    async def run(self) -> Ending:
        """The attempt, from reading the task to reporting its end."""
        with structlog.contextvars.bound_contextvars(task=str(self.ref), epoch=self.epoch):
            ending = await self._run()
            logger.info("worker.attempt_ended", ending=ending.value)
            return ending

    async def _run(self) -> Ending:
        task = await self._read()
        if task is None:
            return Ending.LEFT
        if self._stop.done():
            return await self._stopped_early()
        try:
            workspace = await self._workspaces.prepare(self.ref)
        except WorkspaceError as exc:
            logger.warning("worker.workspace_failed", error=str(exc))
            return await self._block(f"the worker could not prepare its working directory: {exc}")
        await self._report("post_update", text=self._start_line(task, workspace))
        if self._stop.done():
            return await self._stopped_early()
        text = prompt(task, workspace)
        self.process = await CommandProcess.start(
            self._command.argv, workspace.path, self._env(text), text
        )
        logger.info("worker.command_started", pgid=self.process.pgid, cwd=str(workspace.path))
        try:
            return await self._watch(self.process, workspace)
        finally:
            await self.process.close()

    def _stopped(self, why: Stop) -> bool:
        return self._stop.done() and self._stop.result() == why

    async def _stopped_early(self) -> Ending:
        """Stopped (its command not started, or ended): released at a shutdown, else left."""
        return await self._release() if self._stopped(Stop.SHUTDOWN) else Ending.MOVED_ON

    async def _read(self) -> TaskBrief | None:
        """The task as this attempt starts it; None when it is not this attempt's any more."""
        result = await self._call("get_task", {"task": str(self.ref)})
        if not isinstance(result, Done):
            logger.info("worker.not_started", refusal=result.reason.value)
            return None
        task = brief(result.data)
        if task.held.epoch != self.epoch or task.held.status not in LEASED_STATUSES:
            return None
        return task

    def _env(self, text: str) -> dict[str, str]:
        return dict(self._command.env) | {
            "THREADWORK_TASK": str(self.ref),
            "THREADWORK_EPOCH": str(self.epoch),
            # One variable may hold 128 KiB on Linux; stdin has the whole prompt.
            "THREADWORK_PROMPT": text[:MAX_PROMPT_ENV_CHARS],
        }

    def _start_line(self, task: TaskBrief, workspace: Workspace) -> str:
        where = (
            f"worktree on branch `{workspace.branch}`" if workspace.branch else "its own directory"
        )
        return (
            f":arrow_forward: Started `{self._command.name}` on {socket.gethostname()} in a "
            f"{where} (attempt {task.attempts}, epoch {self.epoch})."
        )

    async def _watch(self, process: CommandProcess, workspace: Workspace) -> Ending:
        """Waits for the command to exit or to be stopped, beating meanwhile; reports it."""
        exited = asyncio.create_task(process.wait(), name=f"wait-{process.pgid}")
        beating = asyncio.create_task(self._beat(process.tail), name=f"beat-{process.pgid}")
        try:
            waits: set[asyncio.Future[Any]] = {exited, self._stop}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
        if not exited.done():
            await process.stop()
            await exited
            return await self._stopped_early()
        return await self._finish(exited.result(), process.tail, workspace)

    async def _beat(self, tail: OutputTail) -> None:
        """Reports liveness with the output tail: with the first output, then every 15 s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LIVENESS_EVERY_S):
                await tail.changed.wait()
        while True:
            output = tail.last(LIVENESS_LINES, LIVENESS_CHARS)
            if not await self._report("report_liveness", output_tail=output):
                return
            await asyncio.sleep(LIVENESS_EVERY_S)  # the heartbeat's period, not a wait on work

    async def _finish(self, code: int, tail: OutputTail, workspace: Workspace) -> Ending:
        """Reports the exit, unless the command moved the task on itself."""
        held = await self._held()
        if held is None or held.epoch != self.epoch:
            return Ending.LEFT
        logger.info("worker.command_exited", code=code)
        if held.status not in LEASED_STATUSES:
            if code != 0:
                await self._post_tail(code, tail)  # the command's own move stands
            return Ending.LEFT
        if code != 0:
            return await self._failed(code, tail)
        return await self._succeeded(tail, workspace)

    async def _succeeded(self, tail: OutputTail, workspace: Workspace) -> Ending:
        lines = tail.last(SUMMARY_LINES, SUMMARY_CHARS)
        summary = f":white_check_mark: `{self._command.name}` finished (exit 0)."
        if lines:
            summary += f" Its last lines:\n{_code(lines)}"
        if not await self._report("post_update", text=summary) and self._stop.done():
            return Ending.MOVED_ON
        if workspace.branch is not None:
            head = await self._workspaces.head(workspace)
            # Plain lines: the SDK's server reads a JSON string argument as an object.
            content = f"branch: {workspace.branch}\ncommit: {head}\n"
            await self._report("add_artifact", name=workspace.branch, kind="git", content=content)
        note = f"`{self._command.name}` exited 0"
        moved = await self._report("update_task_status", status="in_review", note=note)
        return self._ending(moved, Ending.REVIEW)

    async def _failed(self, code: int, tail: OutputTail) -> Ending:
        if not await self._post_tail(code, tail) and self._stop.done():
            return Ending.MOVED_ON
        return await self._block(f"`{self._command.name}` exited with code {code}")

    async def _post_tail(self, code: int, tail: OutputTail) -> bool:
        """Attaches the output tail and posts the exit code with the last lines; True when
        the post went through."""
        lines = tail.last(ARTIFACT_LINES, ARTIFACT_CHARS)
        if lines:
            await self._report("add_artifact", name="output tail", kind="log", content=lines)
        text = f":x: `{self._command.name}` exited with code {code}."
        last = tail.last(SUMMARY_LINES, SUMMARY_CHARS)
        if last:
            text += f" Its last lines:\n{_code(last)}"
        return await self._report("post_update", text=text)

    async def _block(self, note: str) -> Ending:
        moved = await self._report("update_task_status", status="blocked", note=note[:900])
        return self._ending(moved, Ending.BLOCKED)

    def _ending(self, moved: bool, ending: Ending) -> Ending:
        """``ending`` if the task was moved; else it moved on meanwhile, or the move was
        refused for another reason (logged) and the task is left as it is."""
        if moved:
            return ending
        return Ending.MOVED_ON if self._stop.done() else Ending.LEFT

    async def _release(self) -> Ending:
        if await self._report("release_task"):
            logger.info("worker.released")
        return Ending.RELEASED

    async def _held(self) -> Held | None:
        result = await self._call("list_my_tasks", {})
        return held_tasks(result.data).get(self.ref) if isinstance(result, Done) else None

    async def _report(self, tool: str, **arguments: Any) -> bool:
        """Calls ``tool`` on this attempt's task and epoch; True when it went through. Refused
        as moved on (superseded, not claimed), the attempt is stopped; refused for another
        reason, it is logged."""
        arguments |= {"task": str(self.ref), "epoch": self.epoch}
        result = await self._call(tool, arguments)
        if isinstance(result, Done):
            return True
        if result.reason in MOVED_ON:
            self.stop(Stop.MOVED_ON)
        else:
            logger.warning("worker.call_refused", tool=tool, refusal=result.text[:300])
        return False

    async def _call(self, tool: str, arguments: dict[str, Any]) -> ToolResult:
        """The call, tried again after a pause when it was refused as a conflict or as too
        many calls: one call, under one idempotency key however often it is sent."""
        arguments = keyed(tool, arguments)
        result: ToolResult = Refused(Refusal.CONFLICT, "not called")
        for _ in range(RETRIES):
            result = await self._link.call(tool, arguments)
            if not isinstance(result, Refused) or result.reason not in RETRY:
                return result
            await asyncio.sleep(RETRY_PAUSE_S)  # back-off, as the refusal asks
        return result


def _code(lines: str) -> str:
    """Lines as a code block that no line of theirs can end."""
    return "```\n" + lines.replace("`", "\u02cb") + "\n```"
