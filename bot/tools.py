"""The agent tool set, defined once, served through two front doors.

Every tool is a ``TaskTools`` method returning a typed outcome: ``Done`` with JSON-ready data, or
``Refused`` with a ``Refusal`` reason (``superseded`` for a replaced run) and a message a person
can read; a refused call changes nothing. The built-in runtime calls ``TaskTools.call``
in-process and branches on the reason. The MCP front door (``channels.mcp.task_server``) resolves
the caller from its bearer token and renders a refusal as a tool error whose text starts with the
reason.
"""

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ParamSpec, Protocol

from pydantic import ValidationError, validate_call

from bot.agent_work import AgentWork
from bot.board import Board
from bot.clock import Clock
from bot.errors import (
    Conflict,
    DomainError,
    IllegalTransition,
    InvalidInput,
    NotAllowed,
    NotClaimHolder,
    NotFound,
    RateLimited,
    Superseded,
)
from bot.guards import check_claim, require_task
from bot.ports import Store
from bot.signal import ChangeSignal
from bot.status import parse_status
from bot.task import Actor, Task, TaskRef
from bot.views import task_view
from bot.work import WakeReason

P = ParamSpec("P")

MAX_WAIT_S = 300.0
#: How often ``wait_for_work`` looks again when no commit in this process woke it.
POLL_S = 1.0
MESSAGES_PER_READ = 50

INSTRUCTIONS = """threadwork gives you tasks that live as Slack threads. Call list_my_tasks or
wait_for_work to find work, get_task to read a task and its new thread messages, post_update to
report progress in the thread (each post renews your lease), add_artifact for results, and
update_task_status to move the task: in_progress while working, in_review when done, blocked with
a note when stuck. Pass the epoch you were given; a call from a superseded run is refused.
A wait_for_work item with reason "stop" means a person pressed Stop: stop working on that task
at once; it stays yours, blocked, until someone assigns it again."""


class Refusal(StrEnum):
    """Why a tool call was refused; its value starts the text an MCP client or a model reads."""

    #: A newer run (lease epoch) holds the task; the caller's run must stop.
    SUPERSEDED = "superseded"
    #: The caller does not hold the task's claim (another agent's task, or its claim was cleared).
    NOT_CLAIMED = "not_claimed"
    #: The task named does not exist.
    NOT_FOUND = "not_found"
    #: The rules forbid it: not in the transition table, or a change only a person may make.
    NOT_ALLOWED = "not_allowed"
    #: The call itself is malformed: an unknown tool, a missing or mistyped argument, a bad ref.
    INVALID = "invalid"
    #: The task changed meanwhile; try again.
    CONFLICT = "conflict"
    #: Too many calls lately; the message says when to retry.
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Done:
    """A tool call that succeeded; ``data`` is JSON-ready."""

    data: dict[str, Any]


@dataclass(frozen=True)
class Refused:
    """A tool call that changed nothing, with the reason and a message a person can read."""

    reason: Refusal
    message: str

    @property
    def text(self) -> str:
        """The refusal as one line that starts with its reason (``superseded: ...``)."""
        prefix = f"{self.reason.value}: "
        return self.message if self.message.startswith(prefix) else prefix + self.message


ToolResult = Done | Refused

#: Each domain error's refusal, by class; any other DomainError is NOT_ALLOWED.
REFUSALS: Mapping[type[DomainError], Refusal] = {
    Superseded: Refusal.SUPERSEDED,
    NotClaimHolder: Refusal.NOT_CLAIMED,
    NotFound: Refusal.NOT_FOUND,
    IllegalTransition: Refusal.NOT_ALLOWED,
    NotAllowed: Refusal.NOT_ALLOWED,
    RateLimited: Refusal.RATE_LIMITED,
    InvalidInput: Refusal.INVALID,
    Conflict: Refusal.CONFLICT,
}


def refusal_for(error: DomainError) -> Refused:
    """The refusal ``error`` stands for, chosen by its class, never by its wording."""
    kinds = (reason for kind, reason in REFUSALS.items() if isinstance(error, kind))
    return Refused(next(kinds, Refusal.NOT_ALLOWED), error.message)


def _tool(method: Callable[P, Awaitable[dict[str, Any]]]) -> Callable[P, Awaitable[ToolResult]]:
    """Makes ``method`` a tool: its data comes back as Done and a domain error as Refused."""

    @functools.wraps(method)
    async def tool(*args: P.args, **kwargs: P.kwargs) -> ToolResult:
        try:
            return Done(await method(*args, **kwargs))
        except DomainError as exc:
            return refusal_for(exc)

    return tool


@dataclass
class TaskTools:
    """The tool set as one agent sees it. A built-in run's tools are pinned to its ``task``
    and that task's lease ``epoch``: any other task is refused as not allowed, before anything
    is read. An external agent's writes must pass the epoch of its directive.

    Every tool returns a ToolResult and never raises a DomainError.
    """

    agent: str
    store: Store
    board: Board
    work: AgentWork
    clock: Clock
    signal: ChangeSignal | None = None
    epoch: int | None = None
    task: TaskRef | None = None
    #: How often ``wait_for_work`` looks for work no signal told it of.
    poll_s: float = POLL_S

    def _ref(self, task: str) -> TaskRef:
        """The task a call names, if this caller may name it."""
        ref = TaskRef.parse(task)
        if self.task is not None and ref != self.task:
            raise NotAllowed(f"This run works on {self.task} only; it cannot touch {ref}.")
        return ref

    def _epoch(self, epoch: int | None) -> int:
        """The epoch a write is fenced with: the run's own, or the one the caller passed."""
        if self.epoch is not None:
            if epoch is not None and epoch != self.epoch:
                raise Superseded(f"this run holds epoch {self.epoch}, not {epoch}.")
            return self.epoch
        if epoch is None:
            raise InvalidInput(
                "Pass `epoch`: the lease epoch from your directive; call get_task to read it."
            )
        return epoch

    async def call(self, name: str, arguments: Mapping[str, object]) -> ToolResult:
        """Runs the runtime tool ``name`` in-process, its arguments checked against its signature.

        An unknown tool, or arguments that do not fit, are refused as INVALID.
        """
        tool = _RUNTIME_CALLS.get(name)
        if tool is None:
            known = ", ".join(RUNTIME_TOOLS)
            return Refused(Refusal.INVALID, f"there is no tool `{name}`; use one of {known}.")
        try:
            return await tool(self, **arguments)
        except ValidationError as exc:
            return Refused(Refusal.INVALID, _bad_arguments(name, exc))

    @_tool
    async def list_my_tasks(self) -> dict[str, Any]:
        async with self.store.read() as reader:
            tasks = await reader.list_tasks_claimed_by(self.agent)
        mine = [t for t in tasks if self.task is None or t.ref == self.task]
        return {"tasks": [_summary(t) for t in mine]}

    @_tool
    async def get_task(self, task: str) -> dict[str, Any]:
        """The task, thread messages past the agent's cursor (which then advances), artifacts."""
        ref = self._ref(task)
        async with self.store.read() as reader:
            current = await require_task(reader, ref)
            check_claim(current, self.agent, self.epoch)
            cursor = await reader.get_cursor(self.agent, current.id)
            messages = [
                m
                for m in await reader.list_messages(current.id)
                if (cursor is None or float(m.ts) > float(cursor))
                and m.author != f"agent:{self.agent}"
            ][:MESSAGES_PER_READ]
            artifacts = await reader.list_artifacts(current.id)
        if messages:
            async with self.store.transaction() as unit:
                await unit.advance_cursor(self.agent, current.id, messages[-1].ts)
        return _summary(current) | {
            "description": current.description,
            "messages": [{"ts": m.ts, "author": m.author, "text": m.text} for m in messages],
            "more_messages": len(messages) == MESSAGES_PER_READ,
            "artifacts": [
                {
                    "id": a.id,
                    "name": a.name,
                    "kind": a.kind,
                    "uri": a.uri,
                    "has_content": a.content is not None,
                }
                for a in artifacts
            ],
        }

    @_tool
    async def post_update(
        self,
        task: str,
        text: str,
        epoch: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        ref, fence = self._ref(task), self._epoch(epoch)
        updated = await self.work.post_update(ref, self.agent, text, fence, idempotency_key)
        return {"ok": True, "task": str(updated.ref), "lease_renewed_at": _iso(updated)}

    @_tool
    async def update_task_status(
        self,
        task: str,
        status: str,
        note: str | None = None,
        epoch: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        ref, fence = self._ref(task), self._epoch(epoch)
        updated = await self.board.update_task_status(
            ref,
            parse_status(status),
            Actor.agent(self.agent),
            epoch=fence,
            note=note,
            idempotency_key=idempotency_key,
        )
        return _summary(updated)

    @_tool
    async def add_artifact(
        self,
        task: str,
        name: str,
        kind: str,
        uri: str | None = None,
        content: str | None = None,
        epoch: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        artifact = await self.work.add_artifact(
            self._ref(task),
            self.agent,
            name,
            kind,
            uri=uri,
            content=content,
            epoch=self._epoch(epoch),
            idempotency_key=idempotency_key,
        )
        return {"ok": True, "artifact_id": artifact.id, "name": artifact.name}

    @_tool
    async def report_liveness(
        self, task: str, output_tail: str, epoch: int | None = None
    ) -> dict[str, Any]:
        """Liveness with the last lines of output; not progress (the lease is not renewed)."""
        ref, fence = self._ref(task), self._epoch(epoch)
        recorded = await self.work.report_liveness(ref, self.agent, fence, output_tail)
        return {"ok": True, "recorded": recorded}

    @_tool
    async def release_task(
        self, task: str, epoch: int | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Hands the attempt back: the task is dispatched again at once, or, past the attempt's
        free releases, when its lease lapses (``redispatched`` says which)."""
        ref, fence = self._ref(task), self._epoch(epoch)
        release = await self.work.release_task(ref, self.agent, fence, idempotency_key)
        return _summary(release.task) | {"redispatched": release.redispatched}

    @_tool
    async def wait_for_work(
        self, timeout_s: float, reasons: list[str] | None = None
    ) -> dict[str, Any]:
        """Returns as soon as a directive or a person's message is waiting (or at the timeout);
        with ``reasons``, only items for those reasons are taken (the others wait)."""
        if not 0 <= timeout_s <= MAX_WAIT_S:
            raise InvalidInput(f"timeout_s must be between 0 and {MAX_WAIT_S:.0f}.")
        wanted = _wake_reasons(reasons)
        deadline = time.monotonic() + timeout_s
        while True:
            async with self.store.transaction() as unit:
                wakeups = await unit.consume_wakeups(self.agent, self.clock(), wanted)
            if wakeups:
                refs = await self._refs({w.task_id for w in wakeups})
                work = [
                    {"task": refs[w.task_id], "reason": w.reason.value, "epoch": w.epoch}
                    for w in wakeups
                    if w.task_id in refs
                ]
                return {"work": work}
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.signal is not None and self.signal.closed):
                return {"work": []}  # nothing came (or this process is shutting down)
            await self._until_change(min(remaining, self.poll_s))

    async def _until_change(self, seconds: float) -> None:
        """Waits for a change this process hears of (its own commits, and on PostgreSQL other
        processes' too), or ``seconds``: polling finds whatever no one announced."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                if self.signal is not None:
                    await self.signal.changed()
                else:
                    await asyncio.sleep(seconds)

    async def _refs(self, task_ids: set[int]) -> dict[int, str]:
        async with self.store.read() as reader:
            tasks = [await reader.get_task_by_id(i) for i in task_ids]
        return {t.id: str(t.ref) for t in tasks if t is not None}


def _wake_reasons(names: list[str] | None) -> frozenset[WakeReason] | None:
    """The wake reasons named, or None for all; an unknown name is refused as INVALID."""
    if names is None:
        return None
    try:
        return frozenset(WakeReason(name) for name in names)
    except ValueError:
        known = ", ".join(r.value for r in WakeReason)
        raise InvalidInput(f"reasons must be among {known}.") from None


def _summary(task: Task) -> dict[str, Any]:
    view = task_view(task)
    keep = (
        "ref",
        "title",
        "status",
        "assignee",
        "assigned_by",
        "attempts",
        "lease_epoch",
        "last_progress_at",
    )
    return {k: view[k] for k in keep} | {"epoch": task.lease_epoch, "channel": task.channel_id}


def _iso(task: Task) -> str | None:
    return task.last_progress_at.isoformat() if task.last_progress_at else None


def _bad_arguments(name: str, error: ValidationError) -> str:
    """Names each argument that does not fit (never echoing its value, which may be long)."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()
    )
    return f"bad arguments for {name} ({problems})."


#: Tools the built-in runtime offers its models (it is woken by the runner, never waits).
RUNTIME_TOOLS = ("list_my_tasks", "get_task", "post_update", "update_task_status", "add_artifact")

#: The runtime tools with their arguments validated against their signatures (self passed first).
_RUNTIME_CALLS: dict[str, Callable[..., Awaitable[ToolResult]]] = {
    name: validate_call(getattr(TaskTools, name)) for name in RUNTIME_TOOLS
}


class ToolsFor(Protocol):
    """Builds the tool set an agent sees; a built-in run pins its task and epoch."""

    def __call__(
        self, agent: str, epoch: int | None = None, task: TaskRef | None = None
    ) -> TaskTools: ...


def make_caller_factory(
    store: Store,
    board: Board,
    work: AgentWork,
    clock: Clock,
    signal: ChangeSignal | None,
    poll_s: float = POLL_S,
) -> ToolsFor:
    def factory(agent: str, epoch: int | None = None, task: TaskRef | None = None) -> TaskTools:
        return TaskTools(agent, store, board, work, clock, signal, epoch, task, poll_s)

    return factory
