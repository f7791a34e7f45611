"""The scripted model the benchmark's agents talk to: read the task from a request, answer a turn.

Stateless on purpose, so the same responder works in-process and in the stand-in's own process:
how far a run has got is the number of assistant turns already in the request.
"""

import re
from collections.abc import Mapping
from typing import Any

from tests.agents.standins import Reply, ToolUse

_DIRECTIVE = re.compile(r"Directive: work on task ([^\s,]+),")


def first_text(body: Mapping[str, Any]) -> str:
    """The text of the request's first message (a string, or its first text block)."""
    content = body["messages"][0]["content"]
    if isinstance(content, str):
        return content
    return next((str(b["text"]) for b in content if b.get("type") == "text"), "")


def task_ref(body: Mapping[str, Any]) -> str:
    """The task named by the directive that opens the run, e.g. ``C1#7``."""
    found = _DIRECTIVE.search(first_text(body))
    if found is None:
        raise ValueError(f"the request's first message names no task: {first_text(body)[:300]!r}")
    return found.group(1)


def steps_done(body: Mapping[str, Any]) -> int:
    """How many model turns this run has already had."""
    return sum(1 for m in body["messages"] if m["role"] == "assistant")


def work_reply(body: Mapping[str, Any], updates: int) -> Reply:
    """``updates`` post_update turns, then update_task_status in_review."""
    ref, done = task_ref(body), steps_done(body)
    if done < updates:
        text = f"Step {done + 1} of {updates}: still on it."
        return Reply([ToolUse("post_update", {"task": ref, "text": text})])
    status = {"task": ref, "status": "in_review", "note": f"done after {updates} updates"}
    return Reply([ToolUse("update_task_status", status)])


class Worker:
    """A responder working every task it is asked about for ``updates`` steps, then in_review."""

    def __init__(self, updates: int) -> None:
        self.updates = updates

    def __call__(self, body: dict[str, Any]) -> Reply:
        return work_reply(body, self.updates)
