"""Rows become domain values here, once."""

from typing import Any

from sqlalchemy import Row

from bot.agents import Agent, AgentKind, AgentSettings
from bot.status import TaskStatus
from bot.task import Task


def task_from_row(row: Row[Any]) -> Task:
    """Maps a ``tasks`` row to a Task."""
    m = row._mapping
    return Task(
        id=m["id"],
        channel_id=m["channel_id"],
        number=m["number"],
        title=m["title"],
        description=m["description"],
        status=TaskStatus(m["status"]),
        created_by=m["created_by"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        thread_ts=m["thread_ts"],
        card_ts=m["card_ts"],
        assignee=m["assignee"],
        assigned_by=m["assigned_by"],
        claimed_by=m["claimed_by"],
        attempts=m["attempts"],
        lease_epoch=m["lease_epoch"],
        last_progress_at=m["last_progress_at"],
        awaiting_input_since=m["awaiting_input_since"],
        alive_at=m["alive_at"],
        output_tail=m["output_tail"],
        output_tail_epoch=m["output_tail_epoch"],
    )


def agent_from_row(row: Row[Any], api_key_configured: bool) -> Agent:
    """Maps an ``agents`` row to an Agent; the key itself never leaves the store this way."""
    m = row._mapping
    return Agent(
        name=m["name"],
        kind=AgentKind(m["kind"]),
        display_name=m["display_name"],
        enabled=bool(m["enabled"]),
        slack_user_id=m["slack_user_id"],
        slack_bot_id=m["slack_bot_id"],
        settings=AgentSettings.from_json(m["settings"] or {}),
        api_key_configured=api_key_configured,
    )
