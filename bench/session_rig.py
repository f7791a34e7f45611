"""The rig for ``bench.session_stop``: the service on the real clock with its loops running,
stand-ins that note when each call arrives, and the Stop trials and task lives it times.

See ``bench/session_stop.py`` for what is measured and how it is reported.
"""

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy import func, select

from bench.agents_turns import steps_done, task_ref
from bot.agents import AgentKind, AgentSettings
from bot.outbox import OPEN_STATES
from bot.root import Overrides, Service, open_service
from bot.settings import Settings
from bot.status import TaskStatus
from bot.task import EventKind, Task, TaskRef
from channels.slack.adapter_http import EVENTS_PATH
from store.schema import outbox
from tests.agents.standins import AnthropicStandIn, Hang, Reply, Text, ToolUse
from tests.slack.standin import TOKEN, SlackStandIn

SECRET = "bench-signing-secret-0123456789"  # noqa: S105  # signs requests to this process only
PERSON = "UBENCH01"
BUILT_IN = "claude-bench"
EXTERNAL = "coder"
STOP_CHANNEL, BUILT_IN_CHANNEL, EXTERNAL_CHANNEL = "CSTOP001", "CLIFE001", "CLIFE002"
#: p99 ceiling, in seconds, for Stop -> run cancelled and Stop -> session suspended.
TARGET_S = 1.0
#: Any one wait of a trial (a card update waits at most a few seconds for the workspace's pace).
TRIAL_TIMEOUT_S = 60.0
#: The longest wait for a change nothing announces (an outbox row settled after its call).
POLL_S = 0.05


@dataclass(frozen=True)
class Seen:
    """A call the Slack stand-in answered: when (perf_counter), which method, its arguments."""

    at: float
    method: str
    args: dict[str, Any]
    ts: str = ""

    @property
    def thread(self) -> str:
        return str(self.args.get("thread_ts") or self.args.get("ts") or "")

    @property
    def event_type(self) -> str:
        return str((self.args.get("metadata") or {}).get("event_type", ""))


@dataclass
class WatchedSlack(SlackStandIn):
    """The Slack stand-in, noting when each post, card update and session call arrived."""

    seen: list[Seen] = field(default_factory=list)
    _more: asyncio.Event = field(default_factory=asyncio.Event)

    def _note(self, seen: Seen) -> None:
        self.seen.append(seen)
        self._more.set()
        self._more = asyncio.Event()

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        at = time.perf_counter()
        reply = super()._chat_postMessage(args)
        self._note(Seen(at, "chat.postMessage", args, str(reply.get("ts", ""))))
        return reply

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        self._note(Seen(time.perf_counter(), "chat.update", args))
        return super()._chat_update(args)

    def _agents_sessions_setStatus(self, args: dict[str, Any]) -> dict[str, Any]:
        self._note(Seen(time.perf_counter(), "agents.sessions.setStatus", args))
        return super()._agents_sessions_setStatus(args)

    def _chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        reply = super()._chat_stopStream(args)
        thread = str((reply.get("message") or {}).get("thread_ts", ""))
        self._note(Seen(time.perf_counter(), "chat.stopStream", args | {"thread_ts": thread}))
        return reply

    async def first(self, match: Callable[[Seen], bool]) -> Seen:
        """The first call ``match`` accepts, waiting (bounded) for it to arrive."""
        async with asyncio.timeout(TRIAL_TIMEOUT_S):
            while (found := next((s for s in self.seen if match(s)), None)) is None:
                await self._more.wait()
        return found

    def in_thread(self, method: str, thread: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.thread == thread]

    def times(self, method: str, channel: str | None = None) -> list[float]:
        return [
            s.at
            for s in self.seen
            if s.method == method and channel in (None, s.args.get("channel"))
        ]


class WatchedAnthropic(AnthropicStandIn):
    """The Anthropic stand-in, noting when each hung request ended (its client hung up)."""

    def __init__(self) -> None:
        super().__init__(two_steps)
        self.ended: list[float] = []

    def _count_hung(self, step: int) -> None:
        if step < 0:
            self.ended.append(time.perf_counter())
        super()._count_hung(step)


def two_steps(body: dict[str, Any]) -> Reply:
    """The built-in agent's work on any task: in_progress, then in_review."""
    ref = task_ref(body)
    if steps_done(body) == 0:
        return Reply([Text("On it."), _status(ref, "in_progress")])
    return Reply([Text("PR is up."), _status(ref, "in_review")])


def _status(ref: str, status: str) -> ToolUse:
    return ToolUse("update_task_status", {"task": ref, "status": status})


def signed(body: str) -> dict[str, str]:
    """The headers Slack sends: v0 HMAC-SHA256 of ``v0:timestamp:body``."""
    ts = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


@dataclass
class Rig:
    """The running service, the two stand-ins, and Slack's side of the conversation."""

    service: Service
    slack: WatchedSlack
    model: WatchedAnthropic
    http: aiohttp.ClientSession
    _requests: "itertools.count[int]" = field(default_factory=lambda: itertools.count(1))

    async def post(self, body: str, content_type: str) -> tuple[int, bytes]:
        headers = {"Content-Type": content_type} | signed(body)
        async with self.http.post(self.service.url + EVENTS_PATH, data=body, headers=headers) as r:
            return r.status, await r.read()

    async def command(self, text: str, channel: str) -> str:
        """Runs ``/task text`` as the benchmark's person; fails loudly unless it was accepted."""
        n = next(self._requests)
        form = {"team_id": "T1", "channel_id": channel, "user_id": PERSON, "command": "/task"}
        form |= {"text": text, "response_url": f"https://hooks.invalid/response/{n}"}
        status, reply = await self.post(urlencode(form), "application/x-www-form-urlencoded")
        answer = str(json.loads(reply).get("text", "")) if status == 200 else ""
        if status != 200 or ":warning:" in answer:
            raise RuntimeError(f"/task {text} in {channel}: {status} {reply!r}")
        return answer

    async def event(self, event: dict[str, Any]) -> int:
        """POSTs a signed Events API callback; returns the HTTP status."""
        envelope = {
            "token": "x",
            "team_id": "T1",
            "api_app_id": "A1",
            "type": "event_callback",
            "event_id": f"EvBENCH{next(self._requests):08d}",
            "event_time": int(time.time()),
            "event": event,
        }
        return (await self.post(json.dumps(envelope), "application/json"))[0]

    async def new_task(self, channel: str, title: str) -> tuple[Task, str]:
        """Creates a task by ``/task new``; returns it and its thread once the card is posted."""
        reply = await self.command(f"new {title}", channel)
        found = re.search(r"\*(\S+#\d+)\*", reply)
        assert found is not None, reply
        ref = found.group(1)
        card = await self.slack.first(
            lambda s: (
                s.event_type == "threadwork_card"
                and s.args["metadata"]["event_payload"]["task"] == ref
            )
        )
        return await self.task(TaskRef.parse(ref)), card.ts

    async def task(self, ref: TaskRef) -> Task:
        async with self.service.core.store.read() as reader:
            task = await reader.get_task(ref)
        assert task is not None, ref
        return task

    async def eventually(self, check: Callable[[], Awaitable[bool]]) -> None:
        """Waits (bounded) for ``check``, woken by the service's commits or every POLL_S."""
        async with asyncio.timeout(TRIAL_TIMEOUT_S):
            while not await check():
                with suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S):
                        await self.service.core.signal.changed()

    async def quiet(self, task: Task) -> None:
        """Waits until ``task`` has no outbox row left to send."""
        query = select(func.count()).select_from(outbox)
        query = query.where(outbox.c.task_id == task.id).where(
            outbox.c.state.in_([state.value for state in OPEN_STATES])
        )

        async def empty() -> bool:
            async with self.service.core.engine.connect() as connection:
                return (await connection.execute(query)).scalar_one() == 0

        await self.eventually(empty)

    def told(self, task: Task, thread: str) -> "Told":
        """What Slack was told about ``task``'s session, and how often its card changed."""
        calls = self.slack.in_thread("agents.sessions.setStatus", thread)
        stops = self.slack.in_thread("chat.stopStream", thread)
        return Told(
            [str(c.args["status"]) for c in calls],
            [str(c.args.get("session_status") or "-") for c in stops],
            self.slack.session_statuses(task.channel_id, thread),
            bool(calls) and bool(calls[0].args.get("title")),
            len(self.slack.in_thread("chat.update", thread)),
        )


@dataclass(frozen=True)
class Told:
    """One task thread's session as Slack heard of it."""

    #: The statuses ``agents.sessions.setStatus`` was called with, in order.
    set_status: list[str]
    #: Each ``chat.stopStream``'s ``session_status`` ("-": none, Slack's default applies).
    stream_stops: list[str]
    #: What the stand-in's session showed, in order (a repeated status shows no change).
    shown: list[str]
    #: The first setStatus call carried the task's title (it created the session).
    titled: bool
    #: ``chat.update`` calls on the thread's card.
    updates: int

    @property
    def passed(self) -> bool:
        """At most one setStatus call per distinct status, and the last one closed."""
        calls = self.set_status
        return len(calls) == len(set(calls)) and calls[-1:] == ["closed"]


@dataclass(frozen=True)
class StopTrial:
    """One Stop: seconds from the event's send to each effect; what the session was told."""

    sent: float
    spans: dict[str, float]
    told: Told


SPANS = {
    "ack": "Stop -> HTTP 200 ack",
    "recorded": "Stop -> `Board.stop_task` reads its clock (STOPPED event)",
    "cancelled": "Stop -> run's asyncio task done (cancelled)",
    "ended": "Stop -> hung model request ends at the Anthropic stand-in",
    "notice": "Stop -> stop notice posted (chat.postMessage)",
    "suspended": "Stop -> `agents.sessions.setStatus` suspended at the Slack stand-in",
    "card": "Stop -> card updated (chat.update)",
}
TARGETS = {"cancelled", "suspended"}


def stop_event(task: Task, thread: str) -> dict[str, Any]:
    return {
        "type": "agent_session_stopped",
        "channel": task.channel_id,
        "thread_ts": thread,
        "user": PERSON,
        "streaming_message_ts": [],
        "event_ts": f"{time.time():.6f}",
    }


async def hung_task(rig: Rig, n: int) -> tuple[Task, str]:
    """A task assigned to the built-in agent, its model call hung, its session processing and
    its outbox empty."""
    rig.model.script(Hang())
    task, thread = await rig.new_task(STOP_CHANNEL, f"Stop probe {n}")
    await rig.command(f"assign {task.number} {BUILT_IN}", STOP_CHANNEL)
    async with asyncio.timeout(TRIAL_TIMEOUT_S):
        await rig.model.until_hung(1)
    await rig.slack.first(lambda s: s.thread == thread and s.args.get("status") == "processing")
    await rig.quiet(task)
    return task, thread


def since(sent: float, thread: str) -> Callable[[Seen], bool]:
    return lambda s: s.at > sent and s.thread == thread


async def stop_trial(rig: Rig, n: int, gap: float) -> StopTrial:
    """Stops one hung run; checks the run was cancelled and the task blocked."""
    task, thread = await hung_task(rig, n)
    handle = rig.service.runner.active[task.id]
    await asyncio.sleep(gap)  # Slack's budgets refill, as between two people's clicks
    requests, done = len(rig.model.requests), []
    handle.task.add_done_callback(lambda _task: done.append(time.perf_counter()))
    sent, wall = time.perf_counter(), time.time()
    assert await rig.event(stop_event(task, thread)) == 200
    spans = {"ack": time.perf_counter() - sent}
    ours = since(sent, thread)
    suspended = await rig.slack.first(lambda s: ours(s) and s.args.get("status") == "suspended")
    notice = await rig.slack.first(lambda s: ours(s) and s.event_type == "threadwork_notice")
    card = await rig.slack.first(lambda s: ours(s) and s.method == "chat.update")
    await asyncio.wait([handle.task], timeout=TRIAL_TIMEOUT_S)
    async with asyncio.timeout(TRIAL_TIMEOUT_S):
        await rig.model.until_hung(0)
    await rig.quiet(task)
    assert handle.task.cancelled(), "the run was cancelled"
    assert len(rig.model.requests) == requests, "no model request after the Stop"
    assert rig.model.ended[-1] > sent, "the hung request ended after the Stop"
    spans |= {"cancelled": done[0] - sent, "ended": rig.model.ended[-1] - sent}
    spans |= {"notice": notice.at - sent, "suspended": suspended.at - sent, "card": card.at - sent}
    spans["recorded"] = await stopped_at(rig, task) - wall
    return StopTrial(sent, spans, rig.told(task, thread))


async def stopped_at(rig: Rig, task: Task) -> float:
    """When (wall clock) ``Board.stop_task`` stopped ``task``; checks it is blocked."""
    async with rig.service.core.store.read() as reader:
        events = await reader.list_events(task.id)
        now = await reader.get_task(task.ref)
    assert now is not None
    assert now.status == TaskStatus.BLOCKED, now
    [stop] = [e for e in events if e.kind == EventKind.STOPPED]
    return stop.at.timestamp()


@dataclass(frozen=True)
class Life:
    """One kind of agent's tasks, worked to in_review then done."""

    kind: str
    threads: list[Told]

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.threads)


async def finish(rig: Rig, task: Task, thread: str) -> Told:
    """Marks ``task`` done as its creator; its session calls and card updates, once all out."""
    await rig.quiet(task)
    await rig.command(f"status {task.number} done", task.channel_id)
    await rig.slack.first(lambda s: s.thread == thread and s.args.get("status") == "closed")
    await rig.quiet(task)
    return rig.told(task, thread)


async def unassigned(rig: Rig, channel: str, title: str, gap: float) -> tuple[Task, str]:
    """A new task with its card out, ``gap`` seconds later (the card-update budget refills)."""
    task, thread = await rig.new_task(channel, title)
    await rig.quiet(task)
    await asyncio.sleep(gap)
    return task, thread


async def built_in_life(rig: Rig, n: int, gap: float) -> Told:
    task, thread = await unassigned(rig, BUILT_IN_CHANNEL, f"Built-in life {n}", gap)
    await rig.command(f"assign {task.number} {BUILT_IN}", BUILT_IN_CHANNEL)

    async def reviewed() -> bool:
        now = await rig.task(task.ref)
        return now.status == TaskStatus.IN_REVIEW and task.id not in rig.service.runner.active

    await rig.eventually(reviewed)
    return await finish(rig, task, thread)


async def external_life(rig: Rig, client: Client, n: int, gap: float) -> Told:
    task, thread = await unassigned(rig, EXTERNAL_CHANNEL, f"External life {n}", gap)
    await rig.command(f"assign {task.number} {EXTERNAL}", EXTERNAL_CHANNEL)
    answer = await client.call_tool("wait_for_work", {"timeout_s": 10})
    work = (answer.structured_content or {}).get("work", [])
    [epoch] = [w["epoch"] for w in work if w["task"] == str(task.ref)]
    for status in ("in_progress", "in_review"):
        await rig.quiet(task)
        args = {"task": str(task.ref), "status": status, "epoch": epoch}
        result = await client.call_tool("update_task_status", args)
        assert not result.is_error, result.content
    return await finish(rig, task, thread)


@asynccontextmanager
async def mcp_client(rig: Rig) -> AsyncIterator[Client]:
    token = await rig.service.core.registry.issue_token(EXTERNAL)
    assert rig.service.mcp_url is not None
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(rig.service.mcp_url, http_client=http)) as client,
    ):
        yield client


def service_settings(database: Path, slack_url: str, anthropic_url: str) -> Settings:
    return Settings(
        DATABASE_URL=f"sqlite:///{database}",
        SLACK_BOT_TOKEN=TOKEN,
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack_url,
        ANTHROPIC_API_KEY="sk-ant-bench-000",
        ANTHROPIC_BASE_URL=anthropic_url,
        THREADWORK_AGENT_CALLS_PER_MINUTE=10_000,
    )


@asynccontextmanager
async def open_rig(workdir: Path) -> AsyncIterator[Rig]:
    """The service on a fresh SQLite file, with both stand-ins and both agents."""
    channels = (STOP_CHANNEL, BUILT_IN_CHANNEL, EXTERNAL_CHANNEL)
    slack = WatchedSlack(
        users={PERSON: {"is_admin": False, "name": "bench"}},
        members={c: {PERSON} for c in channels},
    )
    model = WatchedAnthropic()
    await slack.start()
    await model.start()
    settings = service_settings(workdir / "threadwork.db", slack.url, model.url)
    overrides = Overrides(port=0, worker="bench-session-stop", run_loops=True)
    try:
        async with aiohttp.ClientSession() as http, open_service(settings, overrides) as service:
            registry = service.core.registry
            agent = AgentSettings(model="claude-standin-1", max_tokens=1024)
            await registry.add_agent(BUILT_IN, AgentKind.CLAUDE, "Claude", settings=agent)
            await registry.add_agent(EXTERNAL, display_name="Coder")
            yield Rig(service, slack, model, http)
    finally:
        await model.close()
        await slack.close()
