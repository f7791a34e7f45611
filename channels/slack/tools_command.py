"""``/task-admin agent tools <name> add|remove|list``: a built-in agent's MCP tool servers.

Header values given with ``header=<Name>:<value>`` are stored encrypted and never shown again,
not even in a refusal. Slack sends the command text escaped (``should_escape``): a URL it
detected arrives as ``<url>`` or ``<url|as typed>``, and is unwrapped here before parsing.
"""

import re

from bot.agents import normalize_agent_name
from bot.errors import InvalidInput
from bot.task import Actor
from bot.tool_servers import (
    SEPARATOR,
    ToolServer,
    ToolServerAdd,
    ToolServerList,
    ToolServerRemove,
    parse_request,
)
from channels.slack.parsing import SlashCommand
from channels.slack.render import escape
from channels.slack.services import SlackServices

USAGE = (
    '/task-admin agent tools <name> add <label> stdio "<command> <args>" | http <url> '
    "[header=<Name>:<value> ...] [allow=<tool>,<tool>] · … remove <label> · … list"
)

#: A link as Slack writes it into escaped command text: the URL, then what was typed, if other.
_SLACK_LINK = re.compile(r"<(?P<url>https?://[^\s|>]+)(?:\|[^>]*)?>")


def unwrap_links(words: list[str]) -> list[str]:
    """The words with each Slack link (``<url>``, ``<url|label>``) turned back into its URL."""
    return [_SLACK_LINK.sub(r"\g<url>", word) for word in words]


async def tools_command(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    """Adds, removes or lists the agent's tool servers; the desk checks the caller is an admin."""
    if not args:
        raise InvalidInput("`agent tools` needs the agent's name, then `add`, `remove` or `list`.")
    name = normalize_agent_name(args[0])
    request = parse_request(unwrap_links(args[1:]))
    admin = Actor.user(command.user_id)
    if isinstance(request, ToolServerList):
        return list_text(name, await services.admin.list_tool_servers(admin, name))
    if isinstance(request, ToolServerRemove):
        await services.admin.remove_tool_server(admin, name, request.label)
        return (
            f"Tool server `{request.label}` of `{name}` is removed; its next run goes without it."
        )
    return await _add(name, request, admin, services)


async def _add(name: str, request: ToolServerAdd, admin: Actor, services: SlackServices) -> str:
    replaced = await services.admin.add_tool_server(admin, name, request)
    server = request.server
    verb = "replaced" if replaced else "added"
    offered = (
        ", ".join(f"`{server.label}{SEPARATOR}{tool}`" for tool in server.allow)
        if server.allow is not None
        else f"every tool it lists, as `{server.label}{SEPARATOR}<tool>`"
    )
    secret = " Its header values are stored encrypted and never shown." if request.headers else ""
    return (
        f"Tool server `{server.label}` of `{name}` is {verb} ({server.transport.value}). From its "
        f"next run, the agent is offered {offered}.{secret}"
    )


def list_text(name: str, servers: list[ToolServer]) -> str:
    """The agent's servers, one line each, those the operator no longer permits marked as not
    started; header values never appear."""
    if not servers:
        return f"`{name}` has no tool servers. Add one with `/task-admin agent tools {name} add`."
    lines = [f"*Tool servers of `{name}`*"]
    lines += [_server_line(server) for server in servers]
    return "\n".join(lines)


def _server_line(server: ToolServer) -> str:
    line = f"• `{escape(server.describe())}`"
    if server.denied is not None:
        line += f" · :no_entry: not started: {escape(server.denied)}"
    return line
