"""Prompt caching over a long thread: how much of each step's input the previous step cached.

Two runs of one task each, through the in-process stand-in (which computes what the API would
read from its cache):

* ``quiet``: people wrote ``messages`` messages before the run, so the first request carries them
  all; then the agent posts ``updates`` updates and sets in_review.
* ``chatty``: people wrote the first 60% of the messages before the run and write the rest while
  it works, one before each of the early steps' replies; each arrives through the runner's
  wake-up and the run's inbox, as a new user message at a later step.
"""

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.agents_rig import AGENT, CHANNEL, PERSON, Rig, open_rig
from bench.agents_turns import steps_done, work_reply
from bot.clock import utc_now
from bot.task import Actor, ThreadMessage
from tests.agents.standins import AnthropicStandIn, Recorded, Reply, prefix_reuse

#: How many steps before the end people stop writing, so no wake-up lands after the run.
QUIET_TAIL = 5
NEW_MESSAGES = "New messages in the thread"


@dataclass(frozen=True)
class CacheStep:
    """One model request of the run, as the stand-in accounted for it."""

    step: int
    total_chars: int
    prefix_chars: int
    #: prefix_reuse(previous step, this step); None for the first step.
    reuse: float | None
    input_tokens: int
    cache_creation_tokens: int
    cache_read_tokens: int
    #: How many "New messages in the thread" user turns the request carries so far.
    thread_updates: int

    @property
    def prefix_share(self) -> float:
        return self.prefix_chars / self.total_chars

    @property
    def read_share(self) -> float:
        billed = self.input_tokens + self.cache_creation_tokens + self.cache_read_tokens
        return self.cache_read_tokens / billed if billed else 0.0


@dataclass(frozen=True)
class CacheRun:
    name: str
    before_run: int
    during_run: int
    runs_started: int
    outcome: str
    steps: list[CacheStep]

    @property
    def worst_reuse(self) -> float:
        return min((s.reuse for s in self.steps if s.reuse is not None), default=0.0)


class ChattyThread:
    """A responder that, before answering each of the run's early steps, has a person write."""

    def __init__(self, rig: Rig, updates: int) -> None:
        self.rig = rig
        self.updates = updates
        self.task_id = 0
        self.to_write = 0
        self.written = 0

    async def __call__(self, body: dict[str, Any]) -> Reply:
        early = steps_done(body) < self.updates - QUIET_TAIL
        if self.written < self.to_write and early:
            self.written += 1
            await write_person_messages(self.rig, self.task_id, 1, start=1000 + self.written)
        return work_reply(body, self.updates)


async def measure_cache(
    directory: Path, messages: int, updates: int, within: float
) -> list[CacheRun]:
    """The ``quiet`` and ``chatty`` runs, each over a thread of ``messages`` people's messages."""
    standin = AnthropicStandIn()
    await standin.start()
    try:
        async with open_rig(directory / "cache.db", standin.url, max_steps=updates + 5) as rig:
            rig.start_runner()
            chatty = ChattyThread(rig, updates)
            standin.responder = chatty
            quiet = await _run(rig, standin, "quiet", messages, 0, chatty, within)
            early = (messages * 3) // 5
            loud = await _run(rig, standin, "chatty", early, messages - early, chatty, within)
            return [quiet, loud]
    finally:
        await standin.close()


async def _run(
    rig: Rig,
    standin: AnthropicStandIn,
    name: str,
    before: int,
    during: int,
    chatty: ChattyThread,
    within: float,
) -> CacheRun:
    task = await rig.core.board.create_task(CHANNEL, f"Cache probe ({name})", Actor.user(PERSON))
    await write_person_messages(rig, task.id, before, start=1)
    chatty.task_id, chatty.to_write, chatty.written = task.id, during, 0
    first = len(standin.requests)
    await rig.core.board.assign_task(task.ref, AGENT, PERSON)
    async with asyncio.timeout(within):
        await rig.until_finished({task.id})
    outcome = str(rig.watcher.runs[task.id].result())
    requests = standin.requests[first:]
    starts = sum(1 for r in requests if len(r.body["messages"]) == 1)
    return CacheRun(name, before, chatty.written, starts, outcome, _steps(requests))


def _steps(requests: list[Recorded]) -> list[CacheStep]:
    steps: list[CacheStep] = []
    for index, record in enumerate(requests):
        usage = record.usage or {}
        reuse = prefix_reuse(requests[index - 1], record) if index else None
        steps.append(
            CacheStep(
                step=index + 1,
                total_chars=record.cache.total_chars,
                prefix_chars=record.cache.prefix_chars,
                reuse=reuse,
                input_tokens=int(usage.get("input_tokens", 0)),
                cache_creation_tokens=int(usage.get("cache_creation_input_tokens", 0)),
                cache_read_tokens=int(usage.get("cache_read_input_tokens", 0)),
                thread_updates=_thread_updates(record.body),
            )
        )
    return steps


def _thread_updates(body: dict[str, Any]) -> int:
    count = 0
    for message in body["messages"][1:]:
        content = message["content"]
        blocks = [{"text": content}] if isinstance(content, str) else content
        count += any(str(b.get("text", "")).startswith(NEW_MESSAGES) for b in blocks)
    return count


async def write_person_messages(rig: Rig, task_id: int, count: int, start: int) -> None:
    """``count`` messages by a person in the task's thread, numbered from ``start``."""
    for n in range(start, start + count):
        text = (
            f"Message {n} from the team: keep the health check cheap, it runs every 10 s behind "
            "the load balancer, and on-call wants the failing dependency named in the body."
        )
        ts = f"{1767600000 + 10 * task_id + n / 10_000:.6f}"  # unique per channel
        message = ThreadMessage(task_id, CHANNEL, ts, PERSON, text, utc_now())
        await rig.core.thread_posts.record_thread_message(message, agent=None)
