"""Agent sessions: how fast Stop cancels a built-in agent's run and suspends the thread's
session, and how many ``agents.sessions.setStatus`` calls a task's life costs.

Run from the repository root (about five minutes; everything stays on 127.0.0.1)::

    .venv/bin/python -m bench.session_stop [--trials 30] [--write docs/benchmarks.md]

The service is ``bot.root.open_service`` in this process, as the Slack tests build it, but on the
real clock with its loops running (outbox delivery, the agent runner, the heartbeat, the
reconcile scheduler) and default DeliverySettings: a channel's posts at 60 a minute with a burst
of 3, the workspace's card updates at 50 a minute with a burst of 10. The real slack_sdk talks to
the Slack Web API stand-in, the real anthropic client to the Anthropic stand-in, and the external
agent uses the real MCP client. The stand-ins, the signed requests and the MCP client share the
service's event loop, so every instant is this process's ``time.perf_counter()``.

1. Stop: ``--trials`` tasks (after ``--warmup`` untimed ones), one at a time, in one channel.
   Each is created and assigned to the built-in agent by signed ``/task`` commands, and its
   model call hangs (``Hang``). Once it hangs, its session is ``processing`` and its outbox is
   empty, the trial waits ``--gap`` seconds (Slack's budgets refill, as between people's
   clicks), then POSTs a signed ``agent_session_stopped`` event. Timed from the send: the ack,
   ``Board.stop_task``'s clock (its STOPPED event), the run's asyncio task done (cancelled), the
   hung request ending at the stand-in, the stop notice's post, ``setStatus`` ``suspended``, and
   the card's ``chat.update``.
2. Session calls: ``--tasks`` tasks worked by the built-in agent (two scripted steps: in_progress,
   then in_review) and ``--tasks`` by the external agent over MCP (``wait_for_work``, then
   ``update_task_status`` in_progress and in_review, each once the outbox is empty), each then
   marked done by ``/task status N done``. Once a thread's outbox is empty, its ``setStatus``
   calls are counted (the target: at most one per distinct status), beside the
   ``session_status`` of each ``chat.stopStream`` (a built-in agent's streamed words) and what
   the stand-in's session showed.

Percentiles are nearest-rank: with 30 trials the p99 is the slowest trial.
"""

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy import func, select

from bench.agents_turns import steps_done, task_ref
from bench.machine import Machine
from bot.agents import AgentKind, AgentSettings
from bot.budget import Rate
from bot.delivery import CHANNEL_POSTS, WORKSPACE_UPDATES
from bot.logging import configure_logging
from bot.outbox import OPEN_STATES
from bot.root import Overrides, Service, open_service
from bot.settings import Settings
from bot.status import TaskStatus
from bot.task import EventKind, Task, TaskRef
from channels.slack.adapter_http import EVENTS_PATH
from store.schema import outbox
from tests.agents.standins import AnthropicStandIn, Hang, Reply, Text, ToolUse
from tests.slack.standin import TOKEN, SlackStandIn

RESULTS = Path(__file__).parent / "results" / "session_stop.md"
TITLE = "## Agent sessions: Stop and session calls (issue 11)"
START = "<!-- bench.session_stop:start -->"
END = "<!-- bench.session_stop:end -->"
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


@dataclass
class Run:
    """One invocation: where and how it ran, and what it measured."""

    command_line: str
    machine: Machine
    args: argparse.Namespace
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    trials: list[StopTrial] = field(default_factory=list)
    lives: list[Life] = field(default_factory=list)
    #: The fewest tokens the workspace's card-update bucket, and the stop channel's posting
    #: bucket, held at any Stop's send, replayed from the stand-in's arrivals.
    lowest: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0
    load_after: str = ""


async def bench(run: Run) -> None:
    """The Stop trials, then the built-in agent's tasks, then the external agent's."""
    args = run.args
    with tempfile.TemporaryDirectory(prefix="threadwork_bench_stop_") as workdir:
        async with open_rig(Path(workdir)) as rig:
            opened = time.perf_counter()
            for n in range(args.warmup + args.trials):
                trial = await stop_trial(rig, n + 1, args.gap)
                say(f"stop {n + 1}: " + ", ".join(f"{k} {ms(v)}" for k, v in trial.spans.items()))
                if n >= args.warmup:
                    run.trials.append(trial)
            run.lowest = lowest_tokens(rig.slack, opened, [t.sent for t in run.trials])
            gap = args.life_gap
            built_in = [await built_in_life(rig, n + 1, gap) for n in range(args.tasks)]
            run.lives.append(Life(f"built-in `{BUILT_IN}`", built_in))
            async with mcp_client(rig) as client:
                external = [await external_life(rig, client, n + 1, gap) for n in range(args.tasks)]
            run.lives.append(Life(f"external `{EXTERNAL}` over MCP", external))
            for life in run.lives:
                say(f"{life.kind}: setStatus {counted(t.set_status for t in life.threads)}")


def tokens_at(arrivals: Sequence[float], rate: Rate, opened: float, at: float) -> float:
    """The tokens a bucket of ``rate``, full at ``opened``, held at ``at``, if each arrival
    before it took one as it arrived (the deliverer takes its token just before the call)."""
    per_second, tokens, last = rate.per_minute / 60, rate.burst, opened
    for arrival in sorted(a for a in arrivals if a < at):
        tokens = min(rate.burst, tokens + (arrival - last) * per_second) - 1
        last = arrival
    return min(rate.burst, tokens + (at - last) * per_second)


def lowest_tokens(slack: WatchedSlack, opened: float, sends: list[float]) -> tuple[float, float]:
    updates = slack.times("chat.update")
    posts = slack.times("chat.postMessage", STOP_CHANNEL)
    return (
        min(tokens_at(updates, WORKSPACE_UPDATES, opened, at) for at in sends),
        min(tokens_at(posts, CHANNEL_POSTS, opened, at) for at in sends),
    )


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def spread(values: Sequence[float]) -> str:
    """p50 / p99 / max."""
    return " / ".join(ms(v) for v in (percentile(values, 50), percentile(values, 99), max(values)))


def span_values(run: Run, key: str) -> list[float]:
    return [t.spans[key] for t in run.trials]


def met(run: Run, key: str) -> bool:
    return percentile(span_values(run, key), 99) < TARGET_S


def counted(sequences: Iterable[list[str]]) -> str:
    """Each distinct sequence, with how many threads had it."""
    tally = Counter(" -> ".join(s) or "none" for s in sequences)
    return "; ".join(f"{seq} (x{n})" for seq, n in tally.most_common())


def calls(threads: list[Told]) -> str:
    counts = [len(t.set_status) for t in threads]
    return f"{min(counts)}-{max(counts)} per thread, {sum(counts)} in all"


def low_high(values: list[int]) -> str:
    return f"{min(values)}-{max(values)}"


def verdict(passed: bool) -> str:
    return "pass" if passed else "**FAIL**"


def machine_line(run: Run) -> str:
    m = run.machine
    sdks = ", ".join(f"{n} {version(n)}" for n in ("slack_sdk", "slack_bolt", "anthropic", "mcp"))
    return (
        f"{m.cpu}, nproc {m.nproc}, {m.ram_gib:.1f} GiB RAM, {m.os}; load average (1, 5, 15 "
        f"min) at start {m.load_average}, at end {run.load_after}. Python {m.python}; "
        f"{m.libraries}, {sdks}."
    )


def results(run: Run) -> str:
    """The full breakdown, for ``bench/results/session_stop.md``."""
    a, (updates, posts) = run.args, run.lowest
    lines = [
        f"Measured {run.date} by `{run.command_line}` (whole run {run.seconds:.0f} s).",
        "",
        f"- Machine: {machine_line(run)}",
        "- threadwork: `bot.root.open_service` in this process (SQLite file, real clock, loops "
        "running, default DeliverySettings); the Slack and Anthropic stand-ins, the signed "
        "requests and the MCP client share its event loop.",
        f"- Stop: {len(run.trials)} trials after {a.warmup} untimed, one at a time in one "
        f"channel, each a fresh task; {a.gap:g} s between the trial's set-up settling and its "
        "Stop. Card updates per stopped thread: "
        f"{low_high([t.told.updates for t in run.trials])}. At the "
        f"Stops, the workspace's card-update bucket ({WORKSPACE_UPDATES.per_minute:g}/min, burst "
        f"{WORKSPACE_UPDATES.burst:g}) held at least {max(0.0, updates):.1f} tokens and the channel's "
        f"posting bucket ({CHANNEL_POSTS.per_minute:g}/min, burst {CHANNEL_POSTS.burst:g}) at "
        f"least {max(0.0, posts):.1f} (replayed from the stand-in's arrivals: 1 or more means no Stop's "
        "call waited for the pace).",
        "- setStatus calls on the stopped threads: "
        f"{counted(t.told.set_status for t in run.trials)}.",
        "",
        "| measurement | p50 / p99 / max | target | result |",
        "|---|---|---|---|",
    ]
    for key, name in SPANS.items():
        target = f"p99 < {TARGET_S:g} s" if key in TARGETS else ""
        result = verdict(met(run, key)) if key in TARGETS else ""
        lines.append(f"| {name} | {spread(span_values(run, key))} | {target} | {result} |")
    lines += [
        "",
        f"Session calls: {a.tasks} tasks per agent, one at a time, each assigned "
        f"{a.life_gap:g} s after its card was out. Per task thread: "
        "`agents.sessions.setStatus` calls (the target), the "
        "`session_status` each `chat.stopStream` carried (`-`: none, so Slack shows its "
        "default, active), what the stand-in's session showed, whether the first setStatus "
        "call carried the task's title, and the card's `chat.update` calls.",
        "",
        "| agent | tasks | setStatus calls | setStatus statuses | stream stops | shown "
        "| first call titled | chat.update | target | result |",
        "|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for life in run.lives:
        t = life.threads
        lines.append(
            f"| {life.kind} | {len(t)} | {calls(t)} | {counted(x.set_status for x in t)} "
            f"| {counted(x.stream_stops for x in t)} | {counted(x.shown for x in t)} "
            f"| {sum(x.titled for x in t)} of {len(t)} | {low_high([x.updates for x in t])} "
            f"| at most one per distinct status | {verdict(life.passed)} |"
        )
    return "\n".join(lines) + "\n"


def section(run: Run) -> str:
    """The generated part of the docs' section: the house table, with the command."""
    command = f"`{run.command_line}`"
    n = len(run.trials)
    rows = [
        (f"Stop -> run cancelled, p50 / p99 / max over {n} trials", "cancelled"),
        (f"Stop -> session suspended (setStatus at Slack), over the same {n}", "suspended"),
    ]
    lines = [
        f"Measured {run.date} on {machine_line(run)} Breakdown: `bench/results/session_stop.md`.",
        "",
        "| measurement | command | target | result |",
        "|---|---|---|---|",
    ]
    for i, (name, key) in enumerate(rows):
        result = f"{'met' if met(run, key) else '**missed**'}: {spread(span_values(run, key))}"
        lines.append(
            f"| {name} | {command if i == 0 else 'same'} | p99 < {TARGET_S:g} s | {result} |"
        )
    for life in run.lives:
        t = life.threads
        result = f"{'met' if life.passed else '**missed**'}: {calls(t)}; "
        result += counted(x.set_status for x in t)
        lines.append(
            f"| setStatus calls per task, {life.kind}, {len(t)} tasks | same "
            f"| at most one per distinct status | {result} |"
        )
    return "\n".join([START, "", *lines, "", END])


def write_section(path: Path, run: Run) -> None:
    """Replaces the text between the markers in ``path``, or appends the section at its end."""
    text = path.read_text()
    before, found, rest = text.partition(START)
    if not found:
        path.write_text(text.rstrip("\n") + f"\n\n{TITLE}\n\n{section(run)}\n")
        return
    path.write_text(before + section(run) + rest.partition(END)[2])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.session_stop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--trials", type=int, default=30, help="timed Stops")
    parser.add_argument("--warmup", type=int, default=1, help="untimed Stops before them")
    parser.add_argument("--gap", type=float, default=3.0, help="seconds before each Stop")
    parser.add_argument("--tasks", type=int, default=20, help="tasks per kind of agent")
    parser.add_argument(
        "--life-gap", type=float, default=0.0, help="seconds before each of those tasks' assign"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="breakdown to write")
    parser.add_argument("--write", type=Path, help="also write the section into this file")
    return parser.parse_args(argv)


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configure_logging("WARNING")
    command_line = shlex.join([".venv/bin/python", "-m", "bench.session_stop", *argv])
    run = Run(command_line, Machine.read(), args)
    started = time.perf_counter()
    asyncio.run(bench(run))
    run.seconds = time.perf_counter() - started
    run.load_after = " ".join(f"{n:.2f}" for n in os.getloadavg())
    text = results(run)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    if args.write is not None:
        write_section(args.write, run)
    print(f"\n{text}\nwrote {args.results}" + (f" and {args.write}" if args.write else ""))
    passed = all(met(run, key) for key in TARGETS) and all(life.passed for life in run.lives)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
