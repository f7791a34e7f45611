"""A deterministic script behind the model port: the sandbox's ``demo`` agent, no LLM at all.

It reads the directive the runtime opens a run with, and answers each step from a fixed
script: a plan (moving the task to ``in_progress``), then two working steps (the second adds a
draft as an artifact), then ``in_review``. A title ending with ``?`` makes it ask a question
after the plan; a run woken by a person's message (or by nobody answering) picks up from there.
Its words go out a word at a time through ``on_text``, so the runtime streams them.

``hang()`` makes it stop answering mid-word, like a model call that never returns, until
``answer()``: the lease lapses and the reconcile re-dispatches, then blocks the task.
"""

import asyncio
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.runtime import prompt
from bot.runtime.model import Message, ModelTurn, Progress, TextDelta, ToolCall, ToolSpec
from bot.work import Usage

#: How long each word takes to "generate", so a person can watch it stream.
WORD_S = 0.04
_TASK_BLOCK = re.compile(r"<task>\n(?P<record>.*?)\n</task>", re.S)
_STATUS = re.compile(r"Its status is (?P<status>\w+)\.")
_REF = re.compile(r"work on task (?P<ref>\S+),")
_LAST_TEXT = re.compile(r'"text":\s*(?P<text>"(?:[^"\\]|\\.)*")\}\s*\n</thread_messages>')


@dataclass(frozen=True)
class Brief:
    """What the script reads from a run's opening message."""

    ref: str
    title: str
    status: str
    #: The run was woken by a person's reply or by nobody answering: the question is behind.
    resumed: bool
    redispatched: bool
    #: The last thread message the run was told of, if any.
    heard: str | None

    @property
    def asks(self) -> bool:
        return self.title.rstrip().endswith("?") and not self.resumed


def read_brief(opening: str) -> Brief:
    """The task's ref, title and status, and why the run started, from the directive."""
    block = _TASK_BLOCK.search(opening)
    record: dict[str, Any] = json.loads(block["record"]) if block else {}
    status, ref = _STATUS.search(opening), _REF.search(opening)
    return Brief(
        ref=str(record.get("ref") or (ref["ref"] if ref else "")),
        title=str(record.get("title") or "the task"),
        status=status["status"] if status else "todo",
        resumed="Someone wrote in the task's thread" in opening
        or "Nobody answered your question" in opening,
        redispatched="This is a re-dispatch" in opening,
        heard=last_heard(opening),
    )


def last_heard(text: str) -> str | None:
    """The text of the last thread message in ``text``'s thread messages block, if any."""
    match = _LAST_TEXT.search(text)
    return str(json.loads(match["text"])) if match else None


@dataclass
class Beat:
    """One step of the script: the words, and the tool calls that follow them."""

    text: str
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _plan(brief: Brief) -> Beat:
    again = "Picking this up again: the earlier attempt went quiet.\n" if brief.redispatched else ""
    text = (
        f"{again}Plan for “{brief.title}” (a scripted demo agent, not an LLM):\n"
        "1. Read the directive and the thread.\n"
        "2. Work in two steps, posting as I go.\n"
        "3. Attach a draft and hand the task over for review."
    )
    return Beat(text, _moving_to_work(brief))


def _moving_to_work(brief: Brief) -> list[tuple[str, dict[str, Any]]]:
    if brief.status == "in_progress":
        return []
    return [("update_task_status", {"task": brief.ref, "status": "in_progress"})]


def _question(brief: Brief) -> Beat:
    return Beat(
        f"Before I go on with “{brief.title}”, one question: should it cover only this "
        "release, or everything since the last one?"
    )


def _resume(brief: Brief) -> Beat:
    heard = (
        f"Thanks, I read: “{brief.heard}”."
        if brief.heard
        else "Nobody answered, so I am assuming it covers this release only."
    )
    return Beat(f"{heard} Going on with “{brief.title}”.", _moving_to_work(brief))


def _step_one(brief: Brief) -> Beat:
    return Beat(
        "Step 1 of 2: gathered what the title, the description and the thread say, and "
        "sorted it into what changed, what was fixed and what to watch for."
    )


def _step_two(brief: Brief) -> Beat:
    draft = f"# {brief.title}\n\n- What changed\n- What was fixed\n- What to watch for\n"
    add = {"task": brief.ref, "name": "draft.md", "kind": "document", "content": draft}
    return Beat(
        "Step 2 of 2: wrote a first draft and attached it as `draft.md`.", [("add_artifact", add)]
    )


def _review(brief: Brief) -> Beat:
    note = "Scripted demo: the draft is attached."
    move = {"task": brief.ref, "status": "in_review", "note": note}
    return Beat(
        f"Done: “{brief.title}” is ready for review. Move it back to in progress with a note "
        "in this thread if it needs another pass.",
        [("update_task_status", move)],
    )


def script(brief: Brief) -> list[Callable[[Brief], Beat]]:
    """The beats of one run, in order."""
    if brief.resumed:
        return [_resume, _step_one, _step_two, _review]
    if brief.asks:
        return [_plan, _question, _step_one, _step_two, _review]
    return [_plan, _step_one, _step_two, _review]


def _beats_done(messages: list[Message]) -> int:
    """The assistant turns so far, less an assumption asked for (it is no beat of the script)."""
    done = 0
    for before, message in itertools.pairwise(messages):
        if message["role"] == "assistant" and before.get("content") != prompt.ASK_FOR_ASSUMPTION:
            done += 1
    return done


def _news(messages: list[Message]) -> str:
    """A line acknowledging thread messages the runtime handed over mid-run, if any."""
    last = messages[-1].get("content") if messages else None
    if isinstance(last, str) and last.startswith("New messages in the thread:"):
        heard = last_heard(last)
        return f"(Read the new message: “{heard}”.)\n" if heard else ""
    return ""


class ScriptedModel:
    """Implements ``AgentModel`` with the script; ``hang()`` and ``answer()`` switch it."""

    def __init__(
        self,
        word_s: float = WORD_S,
        pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._word_s = word_s
        self._pause = pause
        self._answering = asyncio.Event()
        self._answering.set()
        self._turns = 0

    @property
    def hung(self) -> bool:
        return not self._answering.is_set()

    def hang(self) -> None:
        """From the next word on, the model stops answering (the run looks stuck)."""
        self._answering.clear()

    def answer(self) -> None:
        """The model answers again."""
        self._answering.set()

    async def complete(
        self,
        system: str,
        tools: list[ToolSpec],
        messages: list[Message],
        on_progress: Progress,
        on_text: TextDelta | None = None,
    ) -> ModelTurn:
        """The script's next beat for this run, its words streamed a word at a time."""
        brief = read_brief(str(messages[0]["content"]) if messages else "")
        if messages and messages[-1].get("content") == prompt.ASK_FOR_ASSUMPTION:
            beat = Beat("Assuming: it covers this release only.")
        else:
            beats = script(brief)
            beat = beats[min(_beats_done(messages), len(beats) - 1)](brief)
            beat.text = _news(messages) + beat.text
        await self._say(beat.text, on_progress, on_text)
        return self._turn(beat)

    async def _say(self, text: str, on_progress: Progress, on_text: TextDelta | None) -> None:
        for word in re.findall(r"\S+\s*", text):
            await self._answering.wait()
            await self._pause(self._word_s)
            await on_progress()
            if on_text is not None:
                await on_text(word)

    def _turn(self, beat: Beat) -> ModelTurn:
        calls = []
        for name, arguments in beat.calls:
            self._turns += 1
            calls.append(ToolCall(f"toolu_demo_{self._turns}", name, arguments))
        content: list[dict[str, Any]] = [{"type": "text", "text": beat.text}]
        content += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in calls
        ]
        words = len(beat.text.split())
        return ModelTurn(
            text=beat.text,
            tool_calls=calls,
            stop_reason="tool_use" if calls else "end_turn",
            usage=Usage(input_tokens=0, output_tokens=words),
            content=content,
        )
