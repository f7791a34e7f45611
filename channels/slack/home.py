"""App Home: the viewer's board, stale and blocked first."""

from datetime import datetime

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.agents import Agent
from bot.policy import PolicyBook
from bot.queries import ViewerBoard
from bot.status import TERMINAL_STATUSES, TaskStatus
from bot.task import Task, is_stale
from channels.slack.parsing import error_code
from channels.slack.render import (
    STATUS_EMOJI,
    Block,
    age,
    agent_label,
    inert_mrkdwn,
    task_heading,
)
from channels.slack.services import SlackServices

logger = structlog.get_logger(__name__)

#: Slack refuses a section whose text is longer than this.
SECTION_LIMIT = 3000

GROUPS = [
    ("stale", ":hourglass: Lease lapsed"),
    (TaskStatus.BLOCKED, ":red_circle: Blocked"),
    (TaskStatus.IN_PROGRESS, ":large_blue_circle: In progress"),
    (TaskStatus.TODO, ":white_circle: To do"),
    (TaskStatus.IN_REVIEW, ":eyes: In review"),
    (TaskStatus.DONE, ":white_check_mark: Done this week"),
    (TaskStatus.CANCELED, ":heavy_multiplication_x: Canceled this week"),
]


async def publish_home(client: AsyncWebClient, services: SlackServices, user_id: str) -> None:
    """Renders and publishes ``user_id``'s board to their App Home."""
    channels = await _member_channels(client, user_id)
    board = await services.queries.viewer_board(user_id, channels)
    view = {"type": "home", "blocks": home_blocks(board)}
    await client.views_publish(user_id=user_id, view=view)


async def _member_channels(client: AsyncWebClient, user_id: str) -> list[str]:
    try:
        response = await client.users_conversations(
            user=user_id, types="public_channel,private_channel", limit=200
        )
    except SlackApiError as exc:
        logger.warning("home.channels_unavailable", error=error_code(exc))
        return []
    return [str(c["id"]) for c in response.get("channels") or []]


def group_of(task: Task, book: PolicyBook, now: datetime) -> str:
    if is_stale(task, now, book.for_channel(task.channel_id).lease_ttl):
        return "stale"
    return task.status.value


def home_blocks(board: ViewerBoard) -> list[Block]:
    """The board: one section per group, newest activity first within a group."""
    tasks, book, agents, now = board.tasks, board.policies, board.agents, board.now
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Your threadwork board"}},
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": "Tasks you assigned or created, and tasks in your channels.",
                }
            ],
        },
    ]
    if not tasks:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "Nothing open or recently finished. `/task new &lt;title&gt;` starts one.",
                },
            }
        )
        return blocks
    for key, title in GROUPS:
        members = [t for t in tasks if group_of(t, book, now) == key]
        if not members:
            continue
        lines = [_line(t, book, agents, now) for t in members[:15]]
        blocks.append({"type": "section", "text": inert_mrkdwn(_section(title, lines))})
        blocks.append({"type": "divider"})
    return blocks[:100]


def _section(title: str, lines: list[str]) -> str:
    """The group's title and as many whole lines as fit in a section, then how many did not."""
    text = f"*{title}*"
    for shown, line in enumerate(lines):
        rest = f"\n…and {len(lines) - shown} more"
        room = SECTION_LIMIT - (0 if shown == len(lines) - 1 else len(rest))
        if len(text) + 1 + len(line) > room:
            return text + rest
        text += "\n" + line
    return text


def _line(task: Task, book: PolicyBook, agents: dict[str, Agent], now: datetime) -> str:
    """One task: heading, assignee, then its attempt and age, or when it was finished."""
    head = (
        f"{STATUS_EMOJI[task.status]} {task_heading(task)} · {agent_label(task.assignee, agents)}"
    )
    if task.status in TERMINAL_STATUSES:
        return f"{head} · {task.status.value} {age(task.updated_at, now)}"
    attempts = book.for_channel(task.channel_id).max_dispatch_attempts
    old = age(task.created_at, now).replace(" ago", " old")
    return f"{head} · attempt {task.attempts}/{attempts} · {old}"
