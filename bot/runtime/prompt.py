"""What a built-in agent is told: who it is, what the task is, and what is new in the thread."""

import json
from typing import Any

from bot.tools import INSTRUCTIONS
from bot.work import WakeReason

DEFAULT_SYSTEM = "You are a capable software agent working tasks handed to you in Slack."

NUDGE = (
    "Keep working. Post progress with post_update, and when the work is ready call "
    "update_task_status with status in_review; if you cannot go on, use blocked with a note."
)
ASK_FOR_ASSUMPTION = (
    "No one is available to answer right now. In one or two sentences, state the most reasonable "
    "assumption that lets you proceed. Start with 'Assuming:' and do not call any tool."
)
PROCEED = "Proceed on that assumption."


def system_prompt(agent_prompt: str | None) -> str:
    return f"{agent_prompt or DEFAULT_SYSTEM}\n\n{INSTRUCTIONS}"


def opening(task: dict[str, Any], reason: WakeReason, handoff: bool) -> str:
    """The first user message of a run: the directive, the task and what is new."""
    lines = [
        f"Directive: work on task {task['ref']} ({task['title']}), lease epoch {task['epoch']}, "
        f"attempt {task['attempts']}. Its status is {task['status']}.",
    ]
    if task.get("description"):
        lines.append(f"Description: {task['description']}")
    if handoff:
        lines.append(
            "This is a re-dispatch: an earlier attempt went quiet. Continue from the thread."
        )
    if reason == WakeReason.MESSAGE:
        lines.append("Someone wrote in the task's thread; read it and respond.")
    if reason == WakeReason.ASSUME:
        lines.append("Nobody answered your question in time: state your assumption and proceed.")
    lines.append(new_messages(task))
    if task.get("artifacts"):
        lines.append("Artifacts so far: " + json.dumps(task["artifacts"]))
    return "\n".join(lines)


def new_messages(task: dict[str, Any]) -> str:
    messages = task.get("messages") or []
    if not messages:
        return "No new messages in the thread."
    shown = "\n".join(f"- {m['author']}: {m['text']}" for m in messages)
    return f"New messages in the thread:\n{shown}"


def looks_like_a_question(text: str) -> bool:
    """The turn ends by asking something of a person."""
    last = text.strip().splitlines()[-1].strip() if text.strip() else ""
    return last.endswith("?")
