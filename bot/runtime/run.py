"""One run of a built-in agent on one task, at one lease epoch.

The loop keeps going without a new chat turn until the agent sets in_review, done or blocked,
or reaches the step limit (then it says where it stopped and blocks the task). Text the model
writes for people streams into the thread as it is generated, with a short line per tool call,
and is stored as the agent's post when the step ends (one lease renewal); where the thread
cannot be streamed into, the step's text is posted instead. A question is answered by an
assumption, or waits for a person, per the agent's autonomy mode. When the task is cancelled,
reassigned or re-dispatched the run stops at its next step and posts nothing more: its late
tool calls are refused as superseded or not_claimed, and the run stops on that reason (a stream
open then is ended where it is, and not stored). The agent's MCP tool servers are open for as
long as the run (``bot.runtime.toolbox``); a call to one of their tools is recorded in the task's
events and counts as liveness, never as progress.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog

from bot.agent_work import AgentWork
from bot.agents import Autonomy
from bot.errors import IllegalTransition, NotClaimHolder, Superseded
from bot.runtime import prompt
from bot.runtime.model import AgentModel, Message, ModelTurn, ModelUnavailable, ToolCall, ToolSpec
from bot.runtime.progress import progress_line
from bot.runtime.stream import Opener, Said, StepStream, Stream, ThreadStreams
from bot.runtime.toolbox import ServerCall, ServerFailure, ToolBox
from bot.session import SESSION_TABLE, SessionStatus, Work
from bot.status import TERMINAL_STATUSES, TaskStatus, parse_status
from bot.task import Task, TaskRef
from bot.tools import Done, Refusal, Refused, TaskTools, ToolResult
from bot.work import WakeReason

logger = structlog.get_logger(__name__)

FINAL_STATUSES = frozenset({"in_review", "done", "blocked"})
#: Refusals that mean this run no longer holds the task: it stops and posts nothing more.
STOP_REASONS = frozenset({Refusal.SUPERSEDED, Refusal.NOT_CLAIMED})
HEARTBEAT_SECONDS = 15.0
#: Statuses that clear the claim (``Board.update_task_status``): a step's stream is stored
#: under the claim, so it ends before the run asks for one of them.
CLAIM_ENDING = TERMINAL_STATUSES | {TaskStatus.BLOCKED}


#: Opens the run's tool servers for as long as the run lasts.
ServerOpener = Callable[[], AbstractAsyncContextManager[ToolBox]]


class RunStopped(Exception):
    """The run no longer holds the task (cancelled, reassigned, re-dispatched)."""


class RunRefused(Exception):
    """A call the run makes on its own behalf was refused for a reason other than stopping."""


def _tool_result(call: ToolCall, result: ToolResult) -> dict[str, Any]:
    """The block the model reads: the data as JSON, or the refusal's line as an error."""
    if isinstance(result, Refused):
        content, is_error = result.text, True
    else:
        content, is_error = json.dumps(result.data), False
    return {"type": "tool_result", "tool_use_id": call.id, "content": content, "is_error": is_error}


def _stop_if_moved_on(result: ToolResult) -> ToolResult:
    """Raises RunStopped when ``result`` says the run no longer holds the task."""
    if isinstance(result, Refused) and result.reason in STOP_REASONS:
        raise RunStopped(result.text)
    return result


def _data_of(result: ToolResult) -> dict[str, Any]:
    """The data of a call the run cannot go on without; stops or fails the run otherwise."""
    _stop_if_moved_on(result)
    if isinstance(result, Refused):
        raise RunRefused(result.text)
    return result.data


def _may_end_claim(call: ToolCall) -> bool:
    """True when ``call`` asks for a status that would clear the run's claim."""
    if call.name != "update_task_status":
        return False
    try:
        return parse_status(str(call.input.get("status", ""))) in CLAIM_ENDING
    except IllegalTransition:
        return False  # not a status: refused as it is, and the claim stays


@dataclass
class AgentRun:
    """Everything one run needs; ``run()`` drives it to an outcome."""

    ref: TaskRef
    agent: str
    epoch: int
    reason: WakeReason
    model: AgentModel
    tools: TaskTools
    work: AgentWork
    specs: list[ToolSpec]
    system: str
    autonomy: Autonomy
    max_steps: int
    #: Where the run's words stream into the thread; None: each step's text is posted.
    streams: ThreadStreams | None = None
    #: The agent's name as people see it, on what it streams (its handle when empty).
    display_name: str = ""
    messages: list[Message] = field(default_factory=list)
    finished: str | None = None
    #: Set when a person writes in the thread during the run; read at the next step.
    inbox: asyncio.Event = field(default_factory=asyncio.Event)
    _last_beat: float = 0.0
    #: Set once a stream could not open in the thread: the run's later steps post instead.
    _posting: bool = False
    #: A stream of this run ended early, leaving the session at the platform's default.
    session_unknown: bool = False
    #: Connects the agent's MCP tool servers when the run starts (None: it has none).
    servers: ServerOpener | None = None
    #: The connected servers' tools while the run lasts.
    box: ToolBox | None = None

    async def run(self) -> str:
        """Works the task; returns how the run ended."""
        context = {"task": str(self.ref), "agent": self.agent, "epoch": self.epoch}
        log = logger.bind(**context)
        try:
            with structlog.contextvars.bound_contextvars(**context):
                async with self._tool_servers():
                    return await self._loop()
        except (RunStopped, NotClaimHolder, Superseded):  # await_input's and record_stream's
            log.info("run.stopped")
            return "stopped"
        except ModelUnavailable as exc:
            log.warning("run.model_unavailable", error=str(exc))
            await self._say(
                f":warning: `{self.agent}` could not reach its model ({exc}); if it stays silent, "
                "the lease will lapse and the task will be re-dispatched."
            )
            return "model_unavailable"

    @asynccontextmanager
    async def _tool_servers(self) -> AsyncIterator[None]:
        """The agent's tool servers, open while the run lasts; those that did not start are
        reported in the thread (once per task for the same failures), and the run goes on with
        the tools it has."""
        if self.servers is None:
            yield
            return
        async with self.servers() as box:
            self.box = box
            self.specs = [*self.specs, *box.specs]
            if box.failures:
                failures = {f.label: f.reason for f in box.failures}
                text = _failures_text(self.agent, box.failures)
                await self.work.report_unavailable_tools(
                    self.ref, self.agent, self.epoch, failures, text
                )
            yield

    async def _loop(self) -> str:
        task = _data_of(await self.tools.get_task(str(self.ref)))
        handoff = self.reason == WakeReason.REDISPATCH or task["attempts"] > 1
        self.messages = [{"role": "user", "content": prompt.opening(task, self.reason, handoff)}]
        for step in range(1, self.max_steps + 1):
            turn = await self._step()
            if self.finished:
                return self.finished
            if turn.tool_calls:
                continue
            if prompt.looks_like_a_question(turn.text):
                if self.autonomy == Autonomy.WAIT and self.reason != WakeReason.ASSUME:
                    await self.work.await_input(self.ref, self.agent, self.epoch, turn.text)
                    return "awaiting_input"
                await self._assume()
                continue
            if not turn.text:
                await self._say(f"_`{self.agent}` finished a step (#{step}) without an update._")
            self.messages.append({"role": "user", "content": prompt.NUDGE})
        return await self._give_up()

    async def _step(self) -> ModelTurn:
        """One model call: its words stream into the thread (or are posted) and its tool calls
        are carried out, each with a progress line in the same stream."""
        task = await self._still_holding()
        if self.inbox.is_set():
            self.inbox.clear()
            news = _data_of(await self.tools.get_task(str(self.ref)))
            self.messages.append({"role": "user", "content": prompt.new_messages(news)})
        said = StepStream(self._opener(task))
        try:
            turn = await self._think(said)
            if turn.tool_calls:
                results = [await self._call(call, said) for call in turn.tool_calls]
                self.messages.append({"role": "user", "content": results})
            await self._done_saying(said)
        except BaseException:  # cancelled too: the stream must not stay open in the thread
            await said.end()
            self.session_unknown = self.session_unknown or said.session_unknown
            raise
        return turn

    async def _think(self, said: StepStream) -> ModelTurn:
        """The model's turn, its words streamed as they come; posted at once instead if no
        stream could open."""
        turn = await self.model.complete(
            self.system, self.specs, self.messages, self._beat, said.write
        )
        await self._spent(turn)
        self.messages.append(
            {"role": "assistant", "content": turn.content or [{"type": "text", "text": "…"}]}
        )
        if turn.text and not said.text:
            await said.write(turn.text)  # a model that did not pass its words on
        if turn.text and said.state is Said.UNAVAILABLE:
            await self._say(turn.text)
        return turn

    def _session_now(self) -> SessionStatus:
        """What the session shows while this run holds the task: processing, or what the
        status the run just set maps to (a stream ends after the step's last tool call)."""
        status = TaskStatus(self.finished) if self.finished else TaskStatus.IN_PROGRESS
        return SESSION_TABLE[status][Work.WORKING]

    def _opener(self, task: Task) -> Opener | None:
        """Opens the step's stream in ``task``'s thread (which the run was just seen to hold)."""
        streams = self.streams
        if streams is None or self._posting:
            return None

        async def open_stream() -> Stream:
            return await streams.start(task, self.agent, self.display_name or self.agent)

        return open_stream

    async def _done_saying(self, said: StepStream) -> None:
        """Ends the step's stream and stores what it showed as the agent's post (renewing the
        lease once); if the stream broke, posts the whole text instead, so nothing is lost."""
        if said.closed:
            return
        session = self._session_now()
        ts = await said.finish(session)
        self._posting = self._posting or said.state is Said.UNAVAILABLE
        self.session_unknown = self.session_unknown or said.session_unknown
        if ts is not None:
            await self.work.record_stream(
                self.ref, self.agent, self.epoch, ts, said.text, session=session
            )
        elif said.state is Said.BROKEN:
            await self._say(said.text)

    async def _call(self, call: ToolCall, said: StepStream) -> dict[str, Any]:
        """Carries out one of the model's tool calls: a final status finishes the run, and a
        refusal saying the run no longer holds the task stops it."""
        if self.box is not None and self.box.owns(call.name):
            return await self._call_server(call, said)
        if _may_end_claim(call):
            await self._done_saying(said)
        result = await self.tools.call(call.name, call.input)
        if isinstance(result, Refused) and result.reason in STOP_REASONS:
            # About this run's own task, the run stops here; about another task the model
            # named, it is told and goes on.
            await self._still_holding()
        await said.line(progress_line(call, result))
        if call.name == "update_task_status" and isinstance(result, Done):
            status = result.data.get("status")
            if result.data.get("ref") == str(self.ref) and status in FINAL_STATUSES:
                self.finished = str(status)
        return _tool_result(call, result)

    async def _call_server(self, call: ToolCall, said: StepStream) -> dict[str, Any]:
        """Passes a call through to its tool server and records it in the task's events: the
        agent is alive, but nothing is progress, and the lease is not renewed. The claim is
        checked first: a call may have side effects (a commit, an HTTP write), and a run that
        no longer holds the task stops without making it."""
        assert self.box is not None  # only called for the box's own tools
        await self._still_holding()
        done: ServerCall = await self.box.call(call.name, call.input)
        if not await self.work.record_tool_call(
            self.ref, self.agent, self.epoch, done.event_data()
        ):
            raise RunStopped("the task moved on")
        await said.line(done.progress_line())
        return {
            "type": "tool_result",
            "tool_use_id": call.id,
            "content": done.output.text,
            "is_error": done.output.is_error,
        }

    async def _assume(self) -> None:
        """Asks the model for its most reasonable assumption, posts it, and goes on."""
        self.messages.append({"role": "user", "content": prompt.ASK_FOR_ASSUMPTION})
        turn = await self.model.complete(self.system, [], self.messages, self._beat)
        await self._spent(turn)
        assumption = turn.text.strip() or "Assuming the simplest reading of the task."
        if not assumption.lower().startswith("assuming"):
            assumption = f"Assuming: {assumption}"
        await self._say(assumption)
        self.messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": assumption}]}
        )
        self.messages.append({"role": "user", "content": prompt.PROCEED})

    async def _give_up(self) -> str:
        note = f"stopped after {self.max_steps} steps without reaching in_review"
        await self._say(f":octagonal_sign: `{self.agent}` {note}; the last thing it did is above.")
        _data_of(await self.tools.update_task_status(str(self.ref), "blocked", note=note))
        return "step_limit"

    async def _say(self, text: str) -> None:
        result = _stop_if_moved_on(await self.tools.post_update(str(self.ref), text))
        if isinstance(result, Refused):
            logger.warning("run.post_refused", task=str(self.ref), error=result.message)

    async def _spent(self, turn: ModelTurn) -> None:
        """Records the turn's tokens; stops the run if the task moved on while the model ran."""
        if not await self.work.record_usage(self.ref, self.agent, self.epoch, turn.usage):
            raise RunStopped("the task moved on")

    async def _still_holding(self) -> Task:
        """The task as it is now; raises RunStopped unless this run still holds it."""
        async with self.tools.store.read() as reader:
            task = await reader.get_task(self.ref)
        if task is None or task.claimed_by != self.agent or task.lease_epoch != self.epoch:
            raise RunStopped("the task moved on")
        return task

    async def _beat(self) -> None:
        """Liveness while the model streams, at most every 15 s; never renews the lease."""
        now = time.monotonic()
        if now - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._last_beat = now
        await self.work.heartbeat(self.ref, self.agent, self.epoch)


def _failures_text(agent: str, failures: list[ServerFailure]) -> str:
    """The one post saying which tool servers did not start, and why."""
    lines = [f"• `{f.label}`: {f.reason}" for f in failures]
    return (
        f":warning: `{agent}` works on without these tool servers, which did not start:\n"
        + "\n".join(lines)
    )
