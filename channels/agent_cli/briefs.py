"""What the worker reads from threadwork's tools, as typed values, and the prompt it writes.

Tool data is parsed here once: a ``wait_for_work`` item, a task the agent holds (from
``list_my_tasks``), and a task's brief (from ``get_task``). The prompt is the directive and
the task's context for one attempt, written for a CLI in print mode.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.status import TaskStatus
from bot.task import TaskRef
from bot.work import WakeReason
from channels.agent_cli.workspaces import Workspace

#: Reasons that start an attempt; the others (a person's message, a wait that ended) do not.
DISPATCHES = frozenset({WakeReason.DIRECTIVE, WakeReason.REDISPATCH})


@dataclass(frozen=True)
class WorkItem:
    """One ``wait_for_work`` item: why the agent should look at a task, at which epoch."""

    ref: TaskRef
    reason: WakeReason
    epoch: int


@dataclass(frozen=True)
class Held:
    """A task the agent holds the claim for, as ``list_my_tasks`` says."""

    ref: TaskRef
    status: TaskStatus
    epoch: int


@dataclass(frozen=True)
class Message:
    author: str
    text: str


@dataclass(frozen=True)
class TaskBrief:
    """A task as an attempt starts it: what to do, and what was said."""

    held: Held
    title: str
    description: str
    attempts: int
    messages: tuple[Message, ...]
    artifacts: tuple[str, ...]


def work_items(data: Mapping[str, Any]) -> list[WorkItem]:
    """The items of a ``wait_for_work`` answer; items this worker cannot read are left out."""
    items = []
    for item in data.get("work", []):
        try:
            items.append(
                WorkItem(
                    TaskRef.parse(item["task"]), WakeReason(item["reason"]), int(item["epoch"])
                )
            )
        except (KeyError, ValueError, TypeError):
            continue
    return items


def held(summary: Mapping[str, Any]) -> Held:
    """A task summary (``list_my_tasks``, ``get_task``) as Held."""
    return Held(TaskRef.parse(summary["ref"]), TaskStatus(summary["status"]), int(summary["epoch"]))


def held_tasks(data: Mapping[str, Any]) -> dict[TaskRef, Held]:
    """The tasks of a ``list_my_tasks`` answer, by ref."""
    return {h.ref: h for h in (held(t) for t in data.get("tasks", []))}


def brief(data: Mapping[str, Any]) -> TaskBrief:
    """A ``get_task`` answer as a TaskBrief."""
    return TaskBrief(
        held(data),
        str(data.get("title", "")),
        str(data.get("description") or ""),
        int(data.get("attempts") or 1),
        tuple(Message(str(m["author"]), str(m["text"])) for m in data.get("messages", [])),
        tuple(f"{a['name']} ({a['kind']})" for a in data.get("artifacts", [])),
    )


def prompt(task: TaskBrief, workspace: Workspace, worker_finishes: bool = True) -> str:
    """The prompt of one attempt: the directive, the task's context, and how to report."""
    ref, epoch = task.held.ref, task.held.epoch
    where = (
        f"a git worktree on branch `{workspace.branch}`; commit your work on it"
        if workspace.branch
        else "a working directory of its own"
    )
    lines = [
        f"You are working on threadwork task {ref}: {task.title}",
        f"Attempt {task.attempts}, lease epoch {epoch}. The current directory is {where}.",
        "",
        *_section("Description", [task.description] if task.description else []),
        *_section(
            "Messages in the task's thread", [f"{m.author}: {m.text}" for m in task.messages]
        ),
        *_section("Artifacts so far", list(task.artifacts)),
        "Reporting: threadwork's MCP server (THREADWORK_MCP_CONFIG) has post_update, "
        "update_task_status and add_artifact; pass "
        f'task="{ref}" and epoch={epoch} with every call. Move the task to in_progress '
        "when you start, post progress in the thread as you go (each post renews your lease), "
        "and if you are stuck, set it to blocked with a note saying why.",
    ]
    if worker_finishes:
        lines.append(
            "When you exit with status 0 and have not moved the task yourself, your last lines "
            "are posted as the summary and the task goes to in_review; a non-zero exit blocks it."
        )
    return "\n".join(lines) + "\n"


def _section(title: str, entries: Sequence[str]) -> list[str]:
    return [f"{title}:", *entries, ""] if entries else []
