"""Ephemeral replies to people: help, show, log and list."""

from datetime import datetime

from bot.agents import Agent
from bot.status import TaskStatus
from bot.task import EventKind, LeasePolicy, Task, TaskEvent, ThreadMessage, is_stale
from channels.slack.render import (
    STATUS_EMOJI,
    actor_label,
    age,
    agent_label,
    escape,
    slack_date,
    task_heading,
)

TASK_USAGE = """*`/task` — tasks as threads*
• `/task new <title>` — post a task card here; its thread is the task
• `/task assign <N> <@agent | agent-name>` — assign task N and send the agent a directive
• `/task status <N> <status>` — move task N (todo, in_progress, in_review, done, blocked, canceled)
• `/task show <N>` — the task, its lease and its latest messages
• `/task log <N>` — the task's history, explained
• `/task list [status]` — tasks in this channel
• `/task cancel <N>` · `/task reopen <N>`
N is the task's number in this channel, written 7 or #7.
In any thread: `@threadwork assign this to @agent` turns the thread into a task."""

ADMIN_USAGE = """*`/task-admin` — for threadwork admins*
• `/task-admin agent add <@user | name> [external] [display=<name>] [name=<handle>]`
• `/task-admin agent list` · `/task-admin agent remove <name>`
• `/task-admin agent key <name>` — opens a form for the agent's API key
• `/task-admin policy [show | ttl <seconds> | attempts <n>]` — this channel's lease policy
• `/task-admin reconcile` — run one reconcile tick now
• `/task-admin stats` — tasks by status, stale, blocked, outbox backlog"""


def show_text(
    task: Task,
    policy: LeasePolicy,
    agents: dict[str, Agent],
    messages: list[ThreadMessage],
    now: datetime,
) -> str:
    """The task's state, its lease and its latest thread messages."""
    lease = "no lease"
    if task.leased:
        lapsed = is_stale(task, now, policy.lease_ttl)
        lease = f"lease {'*lapsed*' if lapsed else 'live'}, last progress {age(task.last_progress_at, now)}"
    lines = [
        task_heading(task),
        f"{STATUS_EMOJI[task.status]} `{task.status.value}` · {agent_label(task.assignee, agents)}"
        + (f" · attempt {task.attempts}/{policy.max_dispatch_attempts}" if task.assignee else "")
        + f" · {lease}",
    ]
    if task.assigned_by:
        lines.append(f"Assigned by <@{task.assigned_by}>")
    if task.description:
        lines.append(f"> {escape(task.description)[:500]}")
    if messages:
        lines.append("*Latest in the thread*")
        lines += [
            f"• <@{m.author}> {age(m.at, now)}: {escape(m.text)[:200]}" for m in messages[-5:]
        ]
    return "\n".join(lines)


def explain_event(event: TaskEvent, agents: dict[str, Agent]) -> str:
    """One sentence of the task's history."""
    who, data = actor_label(event.actor, agents), event.data
    agent = agent_label(data.get("agent"), agents) if data.get("agent") else "the assignee"
    match event.kind:
        case EventKind.CREATED:
            return f"{who} created the task."
        case EventKind.ASSIGNED:
            previous = (
                f" (it was {agent_label(data['previous'], agents)}'s)"
                if data.get("previous")
                else ""
            )
            return f"{who} assigned it to {agent}{previous}."
        case EventKind.DISPATCHED:
            return f"A directive went to {agent}: attempt {data.get('attempt')}, lease epoch {data.get('epoch')}."
        case EventKind.REDISPATCHED:
            return (
                f"The lease lapsed ({data.get('reason')}); re-dispatched to {agent}, "
                f"attempt {data.get('attempt')}/{data.get('max_attempts')}."
            )
        case EventKind.BLOCKED:
            reason = data.get("reason") or data.get("note") or "no reason given"
            return f"{who} marked it blocked: {escape(str(reason))}."
        case EventKind.CANCELED:
            return f"{who} canceled it" + (
                f": {escape(data['note'])}." if data.get("note") else "."
            )
        case EventKind.REOPENED:
            return f"{who} reopened it (it was {data.get('from')})."
        case EventKind.STATUS_CHANGED:
            note = f" — {escape(data['note'])}" if data.get("note") else ""
            return f"{who} moved it from `{data.get('from')}` to `{data.get('to')}`{note}."
    return f"{who}: {event.kind.value}."


def log_text(task: Task, events: list[TaskEvent], agents: dict[str, Agent]) -> str:
    lines = [f"History of {task_heading(task)}"]
    lines += [f"• {slack_date(e.at)} — {explain_event(e, agents)}" for e in events[-40:]]
    return "\n".join(lines)


def list_text(
    tasks: list[Task], status: TaskStatus | None, agents: dict[str, Agent], now: datetime
) -> str:
    scope = f"`{status.value}` tasks" if status else "Tasks"
    if not tasks:
        return f"{scope} in this channel: none."
    lines = [f"{scope} in this channel:"]
    for task in tasks[:50]:
        lines.append(
            f"{STATUS_EMOJI[task.status]} {task_heading(task)} · `{task.status.value}` · "
            f"{agent_label(task.assignee, agents)} · updated {age(task.updated_at, now)}"
        )
    if len(tasks) > 50:
        lines.append(f"…and {len(tasks) - 50} more; filter with `/task list <status>`.")
    return "\n".join(lines)
