"""``/task``: people create, assign, move and inspect tasks. Every misuse says how to do it."""

from collections.abc import Awaitable, Callable

from bot.agents import Agent
from bot.errors import DomainError, InvalidInput, NotFound
from bot.registry import AgentRegistry
from bot.status import parse_status
from bot.task import Actor, TaskRef
from channels.slack.parsing import SlashCommand, parse_task_ref, parse_user_mention, split_args
from channels.slack.render import inert_reply
from channels.slack.replies import TASK_USAGE, clip_reply, list_text, log_text, show_text
from channels.slack.services import SlackServices

USAGE = {
    "new": "/task new <title>",
    "assign": "/task assign <N> <@agent | agent-name>",
    "status": "/task status <N> <status>",
    "show": "/task show <N>",
    "log": "/task log <N>",
    "list": "/task list [status]",
    "cancel": "/task cancel <N>",
    "reopen": "/task reopen <N>",
}

Handler = Callable[[SlashCommand, str, SlackServices], Awaitable[str]]


async def handle_task_command(command: SlashCommand, services: SlackServices) -> str:
    """Runs one ``/task`` invocation and returns the ephemeral reply."""
    sub, _, rest = command.text.partition(" ")
    sub = sub.lower()
    if sub in ("", "help"):
        return TASK_USAGE
    handler = HANDLERS.get(sub)
    if handler is None:
        return f":warning: `{inert_reply(sub)}` is not a `/task` command.\n{TASK_USAGE}"
    try:
        reply = await handler(command, rest.strip(), services)
    except DomainError as exc:
        return clip_reply(f":warning: {inert_reply(exc.message)}\nUsage: `{USAGE[sub]}`")
    return clip_reply(reply)


def _one_ref(command: SlashCommand, rest: str, sub: str) -> TaskRef:
    words = split_args(rest)
    if len(words) != 1:
        raise InvalidInput(f"`{sub}` takes exactly one task number.")
    return parse_task_ref(words[0], command.channel_id)


async def resolve_agent(registry: AgentRegistry, token: str) -> Agent:
    """Finds the agent a person named: a Slack mention of its user, or its handle."""
    mention = parse_user_mention(token)
    if mention is not None:
        agent = await registry.find_by_slack_user(mention.user_id)
        if agent is None:
            raise NotFound(
                f"<@{mention.user_id}> is not registered as an agent; an admin can add it with "
                f"`/task-admin agent add <@{mention.user_id}>`."
            )
        return agent
    agent = await registry.get_agent(token)
    if agent is None:
        raise NotFound(f"There is no agent named `{token}`; `/task-admin agent list` shows them.")
    return agent


async def _new(command: SlashCommand, rest: str, services: SlackServices) -> str:
    if not rest:
        raise InvalidInput("A task needs a title.")
    task = await services.board.create_task(command.channel_id, rest, Actor.user(command.user_id))
    return f"Created *{task.ref}*; its card is on its way to this channel."


async def _assign(command: SlashCommand, rest: str, services: SlackServices) -> str:
    words = split_args(rest)
    if len(words) != 2:
        raise InvalidInput("`assign` needs a task number and an agent.")
    ref = parse_task_ref(words[0], command.channel_id)
    agent = await resolve_agent(services.registry, words[1])
    task = await services.board.assign_task(ref, agent.name, command.user_id)
    return (
        f"Assigned *{task.ref}* to `{agent.name}` (attempt 1); a directive is going to its thread."
    )


async def _status(command: SlashCommand, rest: str, services: SlackServices) -> str:
    words = rest.split(maxsplit=2)  # the note is free text: apostrophes and quotes included
    if len(words) < 2:
        raise InvalidInput("`status` needs a task number and a status.")
    ref = parse_task_ref(words[0], command.channel_id)
    target = parse_status(words[1])
    note = words[2].strip() if len(words) > 2 else None
    task = await services.board.update_task_status(
        ref, target, Actor.user(command.user_id), note=note
    )
    return f"*{task.ref}* is now `{task.status.value}`."


async def _show(command: SlashCommand, rest: str, services: SlackServices) -> str:
    ref = _one_ref(command, rest, "show")
    detail = await services.queries.task_detail(ref, Actor.user(command.user_id))
    return show_text(detail)


async def _log(command: SlashCommand, rest: str, services: SlackServices) -> str:
    ref = _one_ref(command, rest, "log")
    return log_text(await services.queries.task_log(ref, Actor.user(command.user_id)))


async def _list(command: SlashCommand, rest: str, services: SlackServices) -> str:
    words = split_args(rest)
    if len(words) > 1:
        raise InvalidInput("`list` takes at most one status.")
    status = parse_status(words[0]) if words else None
    viewer = Actor.user(command.user_id)
    return list_text(await services.queries.list_tasks(viewer, status, command.channel_id))


async def _cancel(command: SlashCommand, rest: str, services: SlackServices) -> str:
    ref = _one_ref(command, rest, "cancel")
    task = await services.board.cancel_task(ref, Actor.user(command.user_id))
    return f"*{task.ref}* is canceled."


async def _reopen(command: SlashCommand, rest: str, services: SlackServices) -> str:
    ref = _one_ref(command, rest, "reopen")
    task = await services.board.reopen_task(ref, Actor.user(command.user_id))
    again = f" and re-dispatched to `{task.assignee}`" if task.claimed_by else ""
    return f"*{task.ref}* is reopened{again}."


HANDLERS: dict[str, Handler] = {
    "new": _new,
    "assign": _assign,
    "status": _status,
    "show": _show,
    "log": _log,
    "list": _list,
    "cancel": _cancel,
    "reopen": _reopen,
}
