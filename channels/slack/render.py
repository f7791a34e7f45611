"""What people see: task cards, directives, escalations and command replies, as Block Kit.

Output safety: every text that came from a person or an agent (titles, descriptions, notes,
agent posts, artifact names and kinds, handoffs) passes through ``escape`` here, exactly once,
so Slack shows it and parses nothing in it: ``<!channel>``, ``<!here>``, ``<!everyone>``,
``<!subteam^...>``, ``<@U...>`` and ``<url|label>`` all arrive as inert text. Stored text is
plain (``channels.slack.parsing.unescape`` undoes Slack's escaping once, at the edge). Markup
is written only by threadwork: mentions of ids it knows, channel links, dates, and links built
by ``link`` for plain http(s) URLs.
"""

import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from bot.agents import Agent
from bot.session import SessionStatus
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
STOP_ACTION = "task_stop"

#: A Slack user id threadwork may mention (bots have B ids and cannot be mentioned).
_USER_ID = re.compile(r"^[UW][A-Z0-9]+$")
_LINK_SCHEMES = frozenset({"http", "https"})


def escape(text: str) -> str:
    """Makes ``text`` inert in Slack: ``&``, ``<`` and ``>`` become entities, nothing else.

    Slack parses mentions, links and commands only inside ``<...>``, so after this no
    broadcast, mention or disguised link survives; mrkdwn styling (``*bold*``, code, quotes)
    and line breaks still render.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_clipped(text: str, limit: int) -> str:
    """``text`` escaped and at most ``limit`` characters long, cut (with …) between entities."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    cut = escaped[: limit - 1]
    amp = cut.rfind("&", max(0, len(cut) - 4))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def linkable(uri: str) -> bool:
    """Whether threadwork links ``uri``: an http(s) URL with a host and nothing that Slack's
    link markup reads (``|``, ``<``, ``>``), no whitespace and no invisible characters."""
    if any(c in "|<>" or c.isspace() or not c.isprintable() for c in uri):
        return False
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    return parts.scheme.lower() in _LINK_SCHEMES and bool(parts.hostname)


def link(uri: str, label: str | None = None) -> str:
    """``<uri|label>`` (``<uri>`` without a label) for a linkable URI; otherwise inert text."""
    if not linkable(uri):
        return escape(uri) if label is None else f"{escape(label)} ({escape(uri)})"
    return f"<{escape(uri)}>" if label is None else f"<{escape(uri)}|{escape(label)}>"


#: Markup a reply may keep: threadwork's own mentions of a user or channel by id, and its dates.
_KEPT_MARKUP = r"[@#][A-Z0-9]+(?:\|[^<>]*)?>|!date\^\d+\^[^|<>]*\|[^<>]*>"
_LOOSE_MARKUP = re.compile(rf"<(?!{_KEPT_MARKUP})")


def inert_reply(text: str) -> str:
    """A reply to one person with every ``<`` made literal except threadwork's own mentions
    and dates: a refusal that quotes what the person typed (``<!channel>``, a disguised link)
    shows it as text, and usage such as ``<N>`` reads as written."""
    return _LOOSE_MARKUP.sub("&lt;", text)


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
    return f"`{escape(name)}`"


def user_label(user_id: str) -> str:
    """Mentions a Slack user id; anything else (a bot id, a stray value) is shown inert."""
    return f"<@{user_id}>" if _USER_ID.match(user_id) else f"`{escape(user_id)}`"


def actor_label(actor: Actor, agents: dict[str, Agent]) -> str:
    if actor.kind == "user":
        return user_label(actor.id)
    if actor.kind == "agent":
        return agent_label(actor.id, agents)
    return "threadwork"


def author_label(author: str, agents: dict[str, Agent]) -> str:
    """Who wrote a thread message: ``agent:<name>`` for an agent's post, else a Slack id."""
    if author.startswith("agent:"):
        return agent_label(author.removeprefix("agent:"), agents)
    return user_label(author)


def task_heading(task: Task) -> str:
    return f"*{task.ref}* · {escape(task.title)}"


#: How a session status reads on the card and in ``/task show``.
SESSION_LABELS = {
    SessionStatus.PROCESSING: ":gear: working",
    SessionStatus.ACTIVE: ":large_green_circle: active",
    SessionStatus.SUSPENDED: ":double_vertical_bar: waiting for a person",
    SessionStatus.CLOSED: ":white_check_mark: closed",
}


def session_label(session: SessionStatus | None) -> str:
    return SESSION_LABELS[session] if session is not None else "—"


def card_blocks(
    task: Task,
    policy: LeasePolicy,
    agents: dict[str, Agent],
    now: datetime,
    session: SessionStatus | None,
) -> list[Block]:
    """The task card: the truth about a task, and the controls to change it. ``session`` is
    what its agent session shows (``bot.session``)."""
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
        f"*Assigned by*\n{user_label(task.assigned_by)}"
        if task.assigned_by
        else "*Assigned by*\n—",
        f"*Session*\n{session_label(session)}",
    ]
    blocks: list[Block] = [
        {"type": "section", "text": inert_mrkdwn(task_heading(task))},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if task.description:
        blocks.append(
            {
                "type": "context",
                "elements": [inert_mrkdwn(escape_clipped(task.description, 2000))],
            }
        )
    tail = task.current_output_tail
    if tail:
        blocks.append({"type": "section", "text": inert_mrkdwn(output_tail_text(tail))})
    controls = card_controls(task, agents)
    if controls:
        blocks.append({"type": "actions", "block_id": f"task:{task.ref}", "elements": controls})
    return blocks


def output_tail_text(tail: str, limit: int = 2500, heading: str = "*Output* (last lines)") -> str:
    """A worker's command's last lines as a code block, inert; when they are too long for
    ``limit`` escaped characters, the newest lines are kept. Backticks become look-alikes, so
    no line can end the block."""
    kept: list[str] = []
    size = 0
    for line in reversed(tail.replace("`", "\u02cb").splitlines()):
        escaped = escape(line)
        if size + len(escaped) + 1 > limit:
            if not kept:
                kept.append(escaped[-limit:])
            break
        kept.append(escaped)
        size += len(escaped) + 1
    body = "\n".join(reversed(kept)) or " "
    return f"{heading}\n```\n{body}\n```"


def inert_mrkdwn(text: str) -> Block:
    """A mrkdwn text object that Slack does not auto-parse (no bare names become mentions or
    links); the markup threadwork wrote in ``text`` still renders."""
    return {"type": "mrkdwn", "text": text, "verbatim": True}


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
    if task.leased:
        controls.append(_stop_button(task))
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


def _stop_button(task: Task) -> Block:
    """Stops the current attempt, as the session's own Stop button does (for surfaces that
    show no session)."""
    stop = _button("Stop", STOP_ACTION, str(task.ref))
    stop["confirm"] = {
        "title": {"type": "plain_text", "text": "Stop the agent?"},
        "text": {
            "type": "mrkdwn",
            "text": f"The agent stops working on {task.ref} at once, and the task is blocked "
            "until someone assigns it again.",
        },
        "confirm": {"type": "plain_text", "text": "Stop"},
        "deny": {"type": "plain_text", "text": "Let it work"},
    }
    return stop


def _button(text: str, action_id: str, value: str) -> Block:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": value,
    }


def card_text(task: Task) -> str:
    """The notification fallback for the card."""
    return f"{task.ref} · {escape(task.title)} — {task.status.value}"


def directive_text(
    task: Task,
    payload: dict[str, Any],
    agents: dict[str, Agent],
    handoff: str | None,
) -> str:
    """The directive that wakes the assignee, written on behalf of the assigner.

    ``handoff`` is the assignee's last message, already escaped by the caller.
    """
    ref = payload["ref"]
    lines = [
        f"{agent_label(payload['agent'], agents)} — on behalf of "
        f"{user_label(str(payload['on_behalf_of']))}: "
        f"please work on {task_heading(task)} (board: <#{task.channel_id}>).",
        f"Attempt {payload['attempt']}/{payload['max_attempts']} · lease {payload['lease_ttl_s']}s: "
        "post progress in this thread before the lease runs out, or the task is re-dispatched.",
        f'Report status with `update_task_status(task="{ref}", status="in_progress", '
        f"epoch={int(payload['epoch'])})`, then `in_review` when done, or `blocked` with a note "
        "saying why; pass this epoch with every write (posts and artifacts too).",
    ]
    if payload.get("redispatch"):
        why = (
            "the worker running it handed it back (it was shutting down)"
            if payload.get("released")
            else "the lease lapsed"
        )
        lines.append(
            f"Handoff: {why} and the task is re-dispatched. Current status: "
            f"`{escape(str(payload['status']))}`. "
            f"Last progress from the assignee: {handoff or '_none recorded_'}"
        )
    return "\n".join(lines)


def escalation_text(task: Task, payload: dict[str, Any], agents: dict[str, Agent]) -> str:
    """Tells the assigner why the task is blocked and how to get it moving."""
    who = user_label(str(payload["assigned_by"])) if payload.get("assigned_by") else "Heads up"
    return (
        f"{who} {task_heading(task)} is now *blocked*: {escape(str(payload['reason']))} "
        f"(assignee {agent_label(payload['agent'], agents)}, the claim is cleared). "
        f"Reassign it with `/task assign {task.number} &lt;agent&gt;` or the menu on the card, "
        f"or move it back to work with `/task status {task.number} todo`."
    )


def notice_text(task: Task, payload: dict[str, Any], agents: dict[str, Agent]) -> str:
    """threadwork's line in the thread: whom the task waits for, or that it was stopped and
    how to resume; the person it concerns is mentioned."""
    agent = agent_label(payload.get("agent"), agents)
    assigner = payload.get("assigned_by")
    if payload.get("notice") == "stopped":
        resume = f"`/task assign {task.number} {escape(str(payload.get('agent') or '<agent>'))}`"
        return (
            f":black_square_for_stop: Stopped by {user_label(str(payload['by']))}: {agent} no "
            f"longer works on {task_heading(task)}, which is now *blocked*. To resume, {resume} "
            "or pick an agent in the card's menu."
        )
    who = user_label(str(assigner)) if assigner else "someone on the channel"
    return (
        f":double_vertical_bar: {agent} is waiting for {who}: answer in this thread and it goes on."
    )


def agent_post_text(payload: dict[str, Any]) -> str:
    """An agent's post as Slack shows it: its words inert, or threadwork's artifact notice."""
    artifact = payload.get("artifact")
    if isinstance(artifact, dict):
        return artifact_text(artifact)
    return escape(str(payload["text"]))


def artifact_text(artifact: dict[str, Any]) -> str:
    """Announces an artifact: its name and kind inert, its URI a link only when linkable."""
    uri, chars = artifact.get("uri"), artifact.get("content_chars") or 0
    where = link(str(uri)) if uri else f"({chars} characters stored)"
    name, kind = escape(str(artifact.get("name"))), escape(str(artifact.get("kind")))
    return f":paperclip: Added artifact *{name}* ({kind}) {where}"
