"""``/task-admin outbox [retry <id> | drop <id>]``: dead letters and the outbox backlog."""

from bot.dead_letters import OutboxReview, parse_outbox_id
from bot.errors import InvalidInput
from bot.outbox import OutboxRow, OutboxState
from bot.task import Actor
from channels.slack.parsing import SlashCommand
from channels.slack.render import age, escape
from channels.slack.services import SlackServices

USAGE = "/task-admin outbox [retry <id> | drop <id>]"


async def outbox_command(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    """Lists dead and waiting rows, or retries or drops one by its id."""
    if not args:
        return review_text(await services.admin.review_outbox(Actor.user(command.user_id)))
    action = args[0].lower()
    if action not in ("retry", "drop") or len(args) != 2:
        raise InvalidInput(f"`outbox {' '.join(args)[:60]}` is not understood.")
    row_id = parse_outbox_id(args[1])
    admin = Actor.user(command.user_id)
    if action == "retry":
        row = await services.admin.retry_outbox_row(admin, row_id)
        return f"Outbox row {row.id} ({row.kind.value}, *{row.ref}*) is sent again now."
    row = await services.admin.drop_outbox_row(admin, row_id)
    return f"Outbox row {row.id} ({row.kind.value}, *{row.ref}*) is dropped; it is never sent."


def review_text(review: OutboxReview) -> str:
    """Dead rows (with Slack's error), then the oldest rows still to be sent."""
    lines = [f"*Dead* ({review.dead_total}): refused by Slack, not retried"]
    lines += [_line(row, review) for row in review.dead] or ["• none"]
    lines += _more(review.dead_total, len(review.dead))
    lines.append(f"*Waiting* ({review.waiting_total}): oldest first")
    lines += [_line(row, review) for row in review.waiting] or ["• none"]
    lines += _more(review.waiting_total, len(review.waiting))
    if review.dead:
        lines.append("`/task-admin outbox retry <id>` sends one again; `drop <id>` never sends it.")
    return "\n".join(lines)


def _line(row: OutboxRow, review: OutboxReview) -> str:
    error = f" · `{escape(row.last_error[:200])}`" if row.last_error else ""
    state = "" if row.state in (OutboxState.DEAD, OutboxState.PENDING) else f" · {row.state}"
    return (
        f"• `{row.id}` {row.kind.value} *{escape(row.ref)}*{state}{error} · "
        f"{age(row.created_at, review.now)}, {row.attempts} attempt(s)"
    )


def _more(total: int, shown: int) -> list[str]:
    return [f"…and {total - shown} more"] if total > shown else []
