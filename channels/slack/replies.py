"""Ephemeral replies to people: help, show, log and list.

Text that people and agents wrote (titles, descriptions, notes, messages, artifact names and
kinds, event data) is escaped by ``render``; only threadwork's own markup is live.
"""

from datetime import datetime, timedelta
from typing import Any

from bot.agents import Agent
from bot.queries import TaskDetail, TaskList, TaskLog
from bot.task import EventKind, Task, TaskEvent, is_stale
from bot.work import Artifact
from channels.slack.render import (
    STATUS_EMOJI,
    actor_label,
    age,
    agent_label,
    author_label,
    escape,
    escape_clipped,
    link,
    output_tail_text,
    session_label,
    slack_date,
    task_heading,
    user_label,
)

#: A heartbeat this recent means the agent is generating right now.
ALIVE_WITHIN = timedelta(seconds=45)


def alive(task: Task, now: datetime) -> bool:
    """A built-in agent reported liveness lately (heartbeats are not progress)."""
    return task.alive_at is not None and now - task.alive_at <= ALIVE_WITHIN and task.leased


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
• `/task-admin agent add <name> claude [model=<model>] [system="<prompt>"] [max_tokens=<n>] [autonomy=assume|wait]`
• `/task-admin agent add <name> openai base_url=<url> [model=<model>] ...` — any OpenAI-compatible endpoint
• `/task-admin agent token <name> [revoke]` — an MCP token for an external agent, shown once
• `/task-admin agent list` · `/task-admin agent remove <name>`
• `/task-admin agent disable <name>` · `/task-admin agent enable <name>` — stop or resume its work
• `/task-admin agent key <name>` — opens a form for the agent's API key
• `/task-admin agent tools <name> add <label> stdio "<command> <args>" | http <url> [header=<Name>:<value> ...] [allow=<tool>,...]` · `... remove <label>` · `... list` — a built-in agent's MCP tool servers
• `/task-admin policy [show | ttl <seconds> | attempts <n> | agents-close on|off | closers anyone|owners]` — this channel's policy
• `/task-admin reconcile` — run one reconcile tick now
• `/task-admin stats` — tasks by status, stale, blocked, outbox backlog
• `/task-admin outbox [retry <id> | drop <id>]` — dead and waiting outbox rows; send one again or drop it"""


#: Artifacts listed in ``/task show`` (the latest); the rest are counted.
MAX_ARTIFACTS_SHOWN = 10
#: The longest reply threadwork sends a person; Slack cuts messages far longer than this.
MAX_REPLY_CHARS = 3900


def clip_reply(text: str) -> str:
    """``text`` cut to a length Slack shows whole, at a line break, saying so."""
    if len(text) <= MAX_REPLY_CHARS:
        return text
    cut = text.rfind("\n", 0, MAX_REPLY_CHARS - 40)
    return text[: cut if cut > 0 else MAX_REPLY_CHARS - 40] + "\n…(cut short; see the thread)"


def show_text(detail: TaskDetail) -> str:
    """The task's state, its lease and liveness, its artifacts, usage and latest messages."""
    task, policy, agents, now = detail.task, detail.policy, detail.agents, detail.now
    lease = "no lease"
    if task.awaiting_input_since is not None:
        lease = f"lease paused: :speech_balloon: awaiting input since {age(task.awaiting_input_since, now)}"
    elif task.leased:
        lapsed = is_stale(task, now, policy.lease_ttl)
        lease = f"lease {'*lapsed*' if lapsed else 'live'}, last progress {age(task.last_progress_at, now)}"
    if alive(task, now):
        lease += " · :zap: alive, generating"
    lines = [
        task_heading(task),
        f"{STATUS_EMOJI[task.status]} `{task.status.value}` · {agent_label(task.assignee, agents)}"
        + (f" · attempt {task.attempts}/{policy.max_dispatch_attempts}" if task.assignee else "")
        + f" · {lease}",
    ]
    if detail.session is not None:
        lines.append(f"Session: {session_label(detail.session)}")
    if task.assigned_by:
        lines.append(f"Assigned by {user_label(task.assigned_by)}")
    if task.description:
        lines.append(f"> {escape_clipped(task.description, 500)}")
    tail = task.current_output_tail
    if tail:
        heading = f"*Output* (last lines, reported {age(task.alive_at, now)})"
        lines.append(output_tail_text(tail, 1200, heading))
    if detail.artifacts:
        lines.append("*Artifacts* (latest first)")
        shown_artifacts = detail.artifacts[-MAX_ARTIFACTS_SHOWN:]
        lines += [artifact_line(a) for a in reversed(shown_artifacts)]  # latest first
        if len(detail.artifacts) > len(shown_artifacts):
            lines.append(f"…and {len(detail.artifacts) - len(shown_artifacts)} earlier ones.")
    if detail.usage:
        u = detail.usage.usage
        lines.append(
            f"*Tokens* over {detail.usage.steps} step(s): {u.input_tokens:,} in, "
            f"{u.cache_read_tokens:,} cached read, {u.cache_creation_tokens:,} cache written, "
            f"{u.output_tokens:,} out"
        )
    if detail.messages:
        lines.append("*Latest in the thread*")
        lines += [
            f"• {author_label(m.author, agents)} {age(m.at, now)}: {escape_clipped(m.text, 200)}"
            for m in detail.messages[-5:]
        ]
    return "\n".join(lines)


def artifact_line(artifact: Artifact) -> str:
    """One artifact: its name and kind inert, then its link or that its content is stored."""
    where = link(artifact.uri) if artifact.uri else "(stored content)"
    return f"• {escape(artifact.name)} ({escape(artifact.kind)}) {where}"


def _text(value: Any) -> str:
    """A value from an event's data (written by a person, an agent or the core), inert."""
    return escape(str(value))


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
            return (
                f"A directive went to {agent}: attempt {_text(data.get('attempt'))}, "
                f"lease epoch {_text(data.get('epoch'))}."
            )
        case EventKind.REDISPATCHED:
            return (
                f"The lease lapsed ({_text(data.get('reason'))}); re-dispatched to {agent}, "
                f"attempt {_text(data.get('attempt'))}/{_text(data.get('max_attempts'))}."
            )
        case EventKind.BLOCKED:
            reason = data.get("reason") or data.get("note") or "no reason given"
            return f"{who} marked it blocked: {_text(reason)}."
        case EventKind.CANCELED:
            return f"{who} canceled it" + (f": {_text(data['note'])}." if data.get("note") else ".")
        case EventKind.REOPENED:
            return f"{who} reopened it (it was {_text(data.get('from'))})."
        case EventKind.ARTIFACT_ADDED:
            name, kind = _text(data.get("name")), _text(data.get("kind"))
            return f"{who} added artifact {name} ({kind})."
        case EventKind.HEARTBEAT:
            return f"{who} was alive, generating."
        case EventKind.TOOL_CALLED:
            outcome = "ok" if data.get("ok") else "an error"
            return f"{who} called `{_text(data.get('tool'))}`: {outcome}, {_text(data.get('duration_ms'))} ms."
        case EventKind.AWAITING_INPUT:
            return f"{who} asked a question and is waiting for an answer (lease paused)."
        case EventKind.RESUMED:
            why = data.get("reason") or "someone answered in the thread"
            return f"The wait for input ended: {_text(why)}."
        case EventKind.OUTBOX_DEAD:
            return (
                f"Slack refused its {data.get('kind')} for good "
                f"(`{escape(str(data.get('error')))}`); outbox row {data.get('outbox_id')} is dead."
            )
        case EventKind.OUTBOX_RETRIED:
            return f"{who} sent its dead {data.get('kind')} again (outbox row {data.get('outbox_id')})."
        case EventKind.OUTBOX_DROPPED:
            return f"{who} dropped its {data.get('kind')} (outbox row {data.get('outbox_id')}); it is never sent."
        case EventKind.TOOLS_UNAVAILABLE:
            labels = ", ".join(f"`{_text(label)}`" for label in data.get("failures") or {})
            return f"{who} worked on without tool servers that did not start: {labels}."
        case EventKind.RELEASED if data.get("at_lapse"):
            return (
                f"{who}'s worker handed attempt {_text(data.get('attempt'))} back again; "
                "released too often, it is dispatched again only when its lease lapses."
            )
        case EventKind.RELEASED:
            return (
                f"{who}'s worker handed attempt {_text(data.get('attempt'))} back (it was "
                f"shutting down); dispatched again at lease epoch {_text(data.get('new_epoch'))}."
            )
        case EventKind.STATUS_CHANGED:
            note = f" — {_text(data['note'])}" if data.get("note") else ""
            moved = f"from `{_text(data.get('from'))}` to `{_text(data.get('to'))}`"
            return f"{who} moved it {moved}{note}."
    return f"{who}: {_text(event.kind.value)}."


def log_text(log: TaskLog) -> str:
    lines = [f"History of {task_heading(log.task)}"]
    shown = [e for e in log.events if e.kind != EventKind.HEARTBEAT]  # liveness is not history
    lines += [f"• {slack_date(e.at)} — {explain_event(e, log.agents)}" for e in shown[-40:]]
    return "\n".join(lines)


def list_text(listed: TaskList) -> str:
    tasks, status, agents, now = listed.tasks, listed.status, listed.agents, listed.now
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
