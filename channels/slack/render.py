"""What people see: task cards, directives, escalations and command replies, as Block Kit."""

from datetime import datetime, timedelta
from typing import Any

from bot.agents import Agent
from bot.status import TERMINAL_STATUSES, TRANSITIONS, TaskStatus
from bot.task import Actor, LeasePolicy, Task, is_stale

Block = dict[str, Any]

STATUS_EMOJI = {
    TaskStatus.TODO: ":white_circle:",
    TaskStatus.IN_PROGRESS: ":large_blue_circle:",
    TaskStatus.IN_REVIEW: ":eyes:",
    TaskStatus.DONE: ":white_check_mark:",
    TaskStatus.BLOCKED: ":red_circle:",
    TaskStatus.CANCELED: ":heavy_multiplication_x:",
}

#: Action ids on the card; the value of each element is the task ref.
ASSIGN_ACTION = "task_assign"
STATUS_ACTION_PREFIX = "task_status_"
CANCEL_ACTION = "task_cancel"


def escape(text: str) -> str:
    """Escapes the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_date(at: datetime) -> str:
    """A timestamp each reader sees in their own time zone, e.g. 'today at 3:04 PM'."""
    return (
        f"<!date^{int(at.timestamp())}^{{date_short_pretty}} at {{time}}|{at:%Y-%m-%d %H:%M} UTC>"
    )


def age(at: datetime | None, now: datetime) -> str:
    """A short relative age: 45s, 12m, 3h, 2d."""
    if at is None:
        return "never"
    seconds = max(0, int((now - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def agent_label(name: str | None, agents: dict[str, Agent]) -> str:
    """Mentions the agent when it is a Slack user, else names it."""
    if name is None:
        return "unassigned"
    agent = agents.get(name)
    if agent and agent.slack_user_id:
        return f"<@{agent.slack_user_id}>"
    return f"`{name}`"


def actor_label(actor: Actor, agents: dict[str, Agent]) -> str:
    if actor.kind == "user":
        return f"<@{actor.id}>"
    if actor.kind == "agent":
        return agent_label(actor.id, agents)
    return "threadwork"


def task_heading(task: Task) -> str:
    return f"*{task.ref}* · {escape(task.title)}"


def card_blocks(
    task: Task, policy: LeasePolicy, agents: dict[str, Agent], now: datetime
) -> list[Block]:
    """The task card: the truth about a task, and the controls to change it."""
    status = f"{STATUS_EMOJI[task.status]} `{task.status.value}`"
    if task.awaiting_input_since is not None:
        status += " · :speech_balloon: awaiting input"
    elif is_stale(task, now, policy.lease_ttl):
        status += " · :hourglass: lease lapsed"
    elif task.alive_at is not None and task.leased and now - task.alive_at <= timedelta(seconds=45):
        status += " · :zap: alive, generating"
    progress = slack_date(task.last_progress_at) if task.last_progress_at else "—"
    fields = [
        f"*Status*\n{status}",
        f"*Assignee*\n{agent_label(task.assignee, agents)}",
        f"*Attempt*\n{task.attempts}/{policy.max_dispatch_attempts}"
        if task.assignee
        else "*Attempt*\n—",
        f"*Last progress*\n{progress}",
        f"*Assigned by*\n<@{task.assigned_by}>" if task.assigned_by else "*Assigned by*\n—",
    ]
    blocks: list[Block] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": task_heading(task)}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if task.description:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": escape(task.description)[:2000]}],
            }
        )
    controls = card_controls(task, agents)
    if controls:
        blocks.append({"type": "actions", "block_id": f"task:{task.ref}", "elements": controls})
    return blocks


def card_controls(task: Task, agents: dict[str, Agent]) -> list[Block]:
    """An agent menu, a button per legal next status, and cancel; none on a final task."""
    if task.status in TERMINAL_STATUSES:
        return [_button("Reopen", f"{STATUS_ACTION_PREFIX}reopen", str(task.ref))]
    ref = str(task.ref)
    controls: list[Block] = []
    enabled = [a for a in agents.values() if a.enabled][:100]
    if enabled:
        menu: Block = {
            "type": "static_select",
            "action_id": ASSIGN_ACTION,
            "placeholder": {
                "type": "plain_text",
                "text": "Reassign…" if task.assignee else "Assign…",
            },
            "options": [
                {
                    "text": {"type": "plain_text", "text": a.display_name[:75]},
                    "value": f"{ref} {a.name}",
                }
                for a in enabled
            ],
        }
        controls.append(menu)
    for target in sorted(TRANSITIONS[task.status] - {TaskStatus.CANCELED}):
        controls.append(
            _button(
                target.value.replace("_", " ").capitalize(),
                STATUS_ACTION_PREFIX + target.value,
                ref,
            )
        )
    cancel = _button("Cancel", CANCEL_ACTION, ref)
    cancel["style"] = "danger"
    cancel["confirm"] = {
        "title": {"type": "plain_text", "text": "Cancel this task?"},
        "text": {"type": "mrkdwn", "text": f"{task.ref} will be canceled and its claim cleared."},
        "confirm": {"type": "plain_text", "text": "Cancel task"},
        "deny": {"type": "plain_text", "text": "Keep it"},
    }
    controls.append(cancel)
    return controls[:25]


def _button(text: str, action_id: str, value: str) -> Block:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": value,
    }


def card_text(task: Task) -> str:
    """The notification fallback for the card."""
    return f"{task.ref} · {task.title} — {task.status.value}"


def directive_text(
    task: Task,
    payload: dict[str, Any],
    agents: dict[str, Agent],
    handoff: str | None,
) -> str:
    """The directive that wakes the assignee, written on behalf of the assigner."""
    ref = payload["ref"]
    lines = [
        f"{agent_label(payload['agent'], agents)} — on behalf of <@{payload['on_behalf_of']}>: "
        f"please work on {task_heading(task)} (board: <#{task.channel_id}>).",
        f"Attempt {payload['attempt']}/{payload['max_attempts']} · lease {payload['lease_ttl_s']}s: "
        "post progress in this thread before the lease runs out, or the task is re-dispatched.",
        f'Report status with `update_task_status(task="{ref}", status="in_progress")`, then '
        "`in_review` when done, or `blocked` with a note saying why.",
    ]
    if payload.get("redispatch"):
        lines.append(
            f"Handoff: the lease lapsed and the task is re-dispatched. Current status: "
            f"`{payload['status']}`. Last progress from the assignee: {handoff or '_none recorded_'}"
        )
    return "\n".join(lines)


def escalation_text(task: Task, payload: dict[str, Any], agents: dict[str, Agent]) -> str:
    """Tells the assigner why the task is blocked and how to get it moving."""
    who = f"<@{payload['assigned_by']}>" if payload.get("assigned_by") else "Heads up"
    return (
        f"{who} {task_heading(task)} is now *blocked*: {payload['reason']} "
        f"(assignee {agent_label(payload['agent'], agents)}, the claim is cleared). "
        f"Reassign it with `/task assign {task.number} <agent>` or the menu on the card, "
        f"or move it back to work with `/task status {task.number} todo`."
    )
