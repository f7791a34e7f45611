"""Plain-data views of tasks and agents for JSON output; secrets appear only as a flag."""

from dataclasses import asdict
from datetime import datetime
from typing import Any

from bot.agents import Agent
from bot.queries import TaskDetail
from bot.task import Task


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def task_view(task: Task) -> dict[str, Any]:
    """The task's fields, keyed as documented for ``threadwork tasks show --json``."""
    return {
        "ref": str(task.ref),
        "id": task.id,
        "number": task.number,
        "channel": task.channel_id,
        "title": task.title,
        "description": task.description,
        "status": task.status.value,
        "assignee": task.assignee,
        "assigned_by": task.assigned_by,
        "claimed_by": task.claimed_by,
        "attempts": task.attempts,
        "lease_epoch": task.lease_epoch,
        "last_progress_at": _iso(task.last_progress_at),
        "awaiting_input_since": _iso(task.awaiting_input_since),
        "alive_at": _iso(task.alive_at),
        "output_tail": task.output_tail,
        "output_tail_epoch": task.output_tail_epoch,
        "thread_ts": task.thread_ts,
        "created_by": task.created_by,
        "created_at": _iso(task.created_at),
        "updated_at": _iso(task.updated_at),
    }


def task_detail_view(detail: TaskDetail) -> dict[str, Any]:
    """The task with its event log, thread messages, artifacts and token usage."""
    events, messages, usage = detail.events, detail.messages, detail.usage
    return task_view(detail.task) | {
        "session": detail.session.value if detail.session else None,
        "artifacts": [
            {
                "id": a.id,
                "name": a.name,
                "kind": a.kind,
                "uri": a.uri,
                "content_chars": len(a.content) if a.content is not None else None,
                "created_by": a.created_by,
                "created_at": _iso(a.created_at),
            }
            for a in detail.artifacts
        ],
        "usage": None if usage is None else {"steps": usage.steps} | asdict(usage.usage),
        "events": [
            {
                "id": e.id,
                "kind": e.kind.value,
                "at": _iso(e.at),
                "actor": str(e.actor),
                "data": e.data,
            }
            for e in events
        ],
        "messages": [{"ts": m.ts, "author": m.author, "text": m.text} for m in messages],
    }


def agent_view(agent: Agent) -> dict[str, Any]:
    """The agent's public fields; its key is reported only as ``api_key_configured``."""
    return {
        "name": agent.name,
        "kind": agent.kind.value,
        "display_name": agent.display_name,
        "slack_user_id": agent.slack_user_id,
        "slack_bot_id": agent.slack_bot_id,
        "enabled": agent.enabled,
        "model": agent.settings.model,
        "api_key_configured": agent.api_key_configured,
    }
