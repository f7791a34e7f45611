"""``/task-admin``: agents, channel policy, a reconcile on demand, and stats. Admins only."""

import json
import math
from collections.abc import Awaitable, Callable

from slack_sdk.errors import SlackApiError

from bot.access import Closers
from bot.agents import AgentKind, AgentSettings, Autonomy, normalize_agent_name
from bot.errors import DomainError, InvalidInput, NotAllowed
from bot.reconcile import ReconcileReport
from bot.task import Actor
from channels.slack.outbox_command import USAGE as OUTBOX_USAGE
from channels.slack.outbox_command import outbox_command
from channels.slack.parsing import SlashCommand, parse_user_mention, split_args, split_options
from channels.slack.render import inert_reply
from channels.slack.replies import ADMIN_USAGE
from channels.slack.services import SlackServices
from channels.slack.tools_command import USAGE as TOOLS_USAGE
from channels.slack.tools_command import tools_command

USAGE = {
    "agent add": "/task-admin agent add <@user | name> [external | claude | openai] [display=<name>] "
    "[name=<handle>] [model=<model>] [system=<prompt>] [max_tokens=<n>] [autonomy=assume|wait] "
    "[base_url=<url>]",
    "agent token": "/task-admin agent token <name> [revoke]",
    "agent list": "/task-admin agent list",
    "agent remove": "/task-admin agent remove <name>",
    "agent disable": "/task-admin agent disable <name>",
    "agent enable": "/task-admin agent enable <name>",
    "agent key": "/task-admin agent key <name>",
    "agent tools": TOOLS_USAGE,
    "policy": "/task-admin policy [show | ttl <seconds> | attempts <n> | agents-close on|off "
    "| closers anyone|owners]",
    "reconcile": "/task-admin reconcile",
    "stats": "/task-admin stats",
    "outbox": OUTBOX_USAGE,
}
AGENT_KEY_VIEW = "agent_key_modal"

Handler = Callable[[SlashCommand, list[str], SlackServices], Awaitable[str]]


async def handle_admin_command(command: SlashCommand, services: SlackServices) -> str:
    """Runs one ``/task-admin`` invocation for an admin; refuses everyone else."""
    try:
        await services.admin.require_admin(Actor.user(command.user_id))
    except NotAllowed as exc:
        return f":no_entry: {exc.message}"
    try:
        words = split_args(command.text)
    except DomainError as exc:
        return f":warning: {inert_reply(exc.message)}\n{ADMIN_USAGE}"
    if not words or words[0].lower() == "help":
        return ADMIN_USAGE
    key = (
        " ".join(w.lower() for w in words[:2]) if words[0].lower() == "agent" else words[0].lower()
    )
    handler = HANDLERS.get(key)
    if handler is None:
        asked = inert_reply(" ".join(words[:2]))
        return f":warning: `{asked}` is not a `/task-admin` command.\n{ADMIN_USAGE}"
    args = words[2:] if key.startswith("agent") else words[1:]
    try:
        return await handler(command, args, services)
    except DomainError as exc:
        return f":warning: {inert_reply(exc.message)}\nUsage: `{USAGE[key]}`"


async def _agent_add(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    positional, options = split_options(args)
    if not positional or len(positional) > 2:
        raise InvalidInput("`agent add` needs one agent: a @mention of its Slack user or a name.")
    kind = AgentKind.EXTERNAL
    if len(positional) == 2:
        try:
            kind = AgentKind(positional[1].lower())
        except ValueError:
            raise InvalidInput(
                f"`{positional[1]}` is not an agent kind; use `external`, `claude` or `openai`."
            ) from None
    settings = _agent_settings(kind, options)
    mention = parse_user_mention(positional[0])
    user_id = mention.user_id if mention else None
    handle = options.get("name") or (mention.label if mention else positional[0])
    if handle is None and user_id:
        handle = await _slack_handle(services, user_id)
        if handle is None:
            raise InvalidInput(
                f"Slack has no handle for <@{user_id}>; give the agent one with `name=<handle>`."
            )
    name = normalize_agent_name(handle or "")
    registration = await services.admin.register_agent(
        Actor.user(command.user_id),
        name,
        kind,
        display_name=options.get("display"),
        slack_user_id=user_id,
        slack_bot_id=options.get("bot"),
        settings=settings,
    )
    agent = registration.agent
    who = f" (<@{agent.slack_user_id}>)" if agent.slack_user_id else ""
    extra = ""
    if agent.built_in:
        extra = (
            f", model `{agent.settings.model or 'default'}`, autonomy `{agent.settings.autonomy}`"
        )
        if not agent.api_key_configured and agent.kind == AgentKind.CLAUDE:
            extra += (
                f"; set its key with `/task-admin agent key {agent.name}` (or ANTHROPIC_API_KEY)"
            )
    if registration.key_discarded:
        extra += ". Its stored API key was discarded, because its kind or base_url changed"
        if agent.kind == AgentKind.OPENAI:
            extra += f": set one for the new endpoint with `/task-admin agent key {agent.name}`"
    state = "" if agent.enabled else f" It stays disabled: `/task-admin agent enable {agent.name}`."
    return f"Agent `{agent.name}`{who} is registered as `{agent.kind.value}`{extra}.{state}"


def _agent_settings(kind: AgentKind, options: dict[str, str]) -> AgentSettings:
    """Runtime settings from ``key=value`` options; only built-in agents take them."""
    runtime = {"model", "system", "max_tokens", "autonomy", "base_url"}
    if kind == AgentKind.EXTERNAL:
        if runtime & options.keys():
            raise InvalidInput(
                "model, system, max_tokens, autonomy and base_url are for built-in agents."
            )
        return AgentSettings()
    try:
        autonomy = Autonomy(options.get("autonomy", "assume").lower())
    except ValueError:
        raise InvalidInput("autonomy must be `assume` or `wait`.") from None
    max_tokens = options.get("max_tokens")
    if max_tokens is not None and not (max_tokens.isdigit() and 1 <= int(max_tokens) <= 64000):
        raise InvalidInput("max_tokens must be a whole number from 1 to 64000.")
    if kind == AgentKind.OPENAI and not options.get("base_url"):
        raise InvalidInput("An `openai` agent needs base_url=<its OpenAI-compatible endpoint>.")
    return AgentSettings(
        model=options.get("model"),
        system_prompt=options.get("system"),
        max_tokens=int(max_tokens) if max_tokens else None,
        autonomy=autonomy,
        base_url=options.get("base_url"),
    )


async def _slack_handle(services: SlackServices, user_id: str) -> str | None:
    """The user's Slack handle, to name an agent added by mention alone."""
    try:
        response = await services.client.users_info(user=user_id)
    except SlackApiError:
        return None
    user = response.get("user") or {}
    return str(user.get("name") or "") or None


async def _agent_list(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    agents = await services.admin.list_agents(Actor.user(command.user_id))
    if not agents:
        return "No agents yet. Add one with `/task-admin agent add <@user>`."
    lines = ["*Agents*"]
    for a in agents:
        slack = f" · <@{a.slack_user_id}>" if a.slack_user_id else ""
        key = " · API key set" if a.api_key_configured else ""
        state = "" if a.enabled else " · disabled"
        lines.append(f"• `{a.name}` ({a.kind.value}) {a.display_name}{slack}{key}{state}")
    return "\n".join(lines)


def _one_name(args: list[str], subcommand: str) -> str:
    """The one agent name a subcommand takes, normalized; anything else is refused."""
    if len(args) != 1:
        raise InvalidInput(f"`{subcommand}` needs the agent's name.")
    return normalize_agent_name(args[0])


async def _agent_remove(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    name = _one_name(args, "agent remove")
    await services.admin.remove_agent(Actor.user(command.user_id), name)
    return f"Agent `{name}` is removed; its tasks keep their history."


async def _agent_disable(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    name = _one_name(args, "agent disable")
    held = await services.admin.set_enabled(Actor.user(command.user_id), name, False)
    reply = (
        f"Agent `{name}` is disabled: it cannot be assigned, its MCP tokens are refused and "
        "the built-in runtime starts no new runs for it."
    )
    if held:
        refs = ", ".join(f"*{t.ref}*" for t in held[:10]) + (" …" if len(held) > 10 else "")
        reply += (
            f" It still holds {len(held)} task(s): {refs}. Reassign them, or they are blocked "
            "when their leases lapse."
        )
    return reply + f" `/task-admin agent enable {name}` undoes this."


async def _agent_enable(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    name = _one_name(args, "agent enable")
    await services.admin.set_enabled(Actor.user(command.user_id), name, True)
    return f"Agent `{name}` is enabled and can be assigned again."


async def _agent_token(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    if len(args) not in (1, 2) or (len(args) == 2 and args[1].lower() != "revoke"):
        raise InvalidInput("`agent token` needs the agent's name, and optionally `revoke`.")
    name = normalize_agent_name(args[0])
    if len(args) == 2:
        revoked = await services.admin.revoke_tokens(Actor.user(command.user_id), name)
        return f"Revoked {revoked} MCP token(s) of `{name}`; clients using them are refused now."
    token = await services.admin.issue_token(Actor.user(command.user_id), name)
    return (
        f"A new MCP token for `{name}` (shown once, only to you; threadwork keeps only its hash):\n"
        f"`{token}`\nConnect with `Authorization: Bearer <token>` to the MCP endpoint, or run "
        "`threadwork mcp --url <endpoint> --token <token>` for a local client."
    )


async def _agent_key(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    name = _one_name(args, "agent key")
    if await services.admin.get_agent(Actor.user(command.user_id), name) is None:
        raise InvalidInput(f"There is no agent named `{name}`.")
    await services.client.views_open(trigger_id=command.trigger_id, view=agent_key_view(name))
    return f"Enter `{name}`'s API key in the form; it is stored encrypted and never shown again."


def agent_key_view(name: str) -> dict[str, object]:
    """A modal so an API key never lands in channel history."""
    return {
        "type": "modal",
        "callback_id": AGENT_KEY_VIEW,
        "private_metadata": json.dumps({"agent": name}),
        "title": {"type": "plain_text", "text": "Agent API key"},
        "submit": {"type": "plain_text", "text": "Save key"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "api_key",
                "label": {"type": "plain_text", "text": f"API key for {name}"},
                "element": {"type": "plain_text_input", "action_id": "value"},
                "hint": {
                    "type": "plain_text",
                    "text": "Stored encrypted; only admins can replace it.",
                },
            }
        ],
    }


async def _policy(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    channel, admin = command.channel_id, Actor.user(command.user_id)
    if args and args[0].lower() == "closers":
        if len(args) != 2 or args[1].lower() not in ("anyone", "owners"):
            raise InvalidInput("`policy closers` takes `anyone` or `owners`.")
        await services.admin.set_channel_policy(admin, channel, closers=Closers(args[1].lower()))
    elif args and args[0].lower() == "agents-close":
        if len(args) != 2 or args[1].lower() not in ("on", "off"):
            raise InvalidInput("`policy agents-close` takes `on` or `off`.")
        allowed = args[1].lower() == "on"
        await services.admin.set_channel_policy(admin, channel, agents_may_close=allowed)
    elif args and args[0].lower() in ("ttl", "attempts"):
        if len(args) != 2:
            raise InvalidInput(f"`policy {args[0]}` needs one number.")
        value = _number(args[1])
        if args[0].lower() == "ttl":
            await services.admin.set_channel_policy(admin, channel, lease_ttl_s=value)
        elif value != int(value):
            raise InvalidInput("Attempts must be a whole number.")
        else:
            await services.admin.set_channel_policy(admin, channel, max_attempts=int(value))
    elif (args and args[0].lower() != "show") or len(args) > 1:
        raise InvalidInput(f"`policy {' '.join(args)}` is not understood.")
    book = await services.admin.policies(Actor.user(command.user_id))
    policy, own = book.for_channel(channel), book.channels.get(channel)
    source = "this channel's own" if own else "the global defaults"
    agents_done = (
        "agents may mark tasks done"
        if book.agents_may_close(channel)
        else "only people mark tasks done"
    )
    anyone_closes = (
        "; any member of the channel may cancel, finish or reassign a task"
        if book.closers(channel) == Closers.ANYONE
        else ""
    )
    return (
        f"Lease policy in <#{channel}> ({source}): TTL {policy.lease_ttl.total_seconds():g}s, "
        f"{policy.max_dispatch_attempts} dispatch attempt(s) before a silent task is blocked; "
        f"{agents_done}{anyone_closes}."
    )


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"`{text}` is not a number.") from None
    if not math.isfinite(value):
        raise InvalidInput(f"`{text}` is not a finite number.")
    return value


async def _reconcile(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    report = await services.admin.reconcile(Actor.user(command.user_id))
    return report_text(report)


def report_text(report: ReconcileReport) -> str:
    if report.held_elsewhere:
        return "Reconcile tick: skipped, another replica is running one right now."

    def refs(items: list[object]) -> str:
        return ", ".join(f"*{r}*" for r in items) or "none"

    return (
        f"Reconcile tick: re-dispatched {refs(list(report.redispatched))}; "
        f"blocked {refs(list(report.blocked))}; renewed from missed posts {refs(list(report.renewed))}; "
        f"{report.skipped} changed meanwhile, {report.deferred} deferred."
    )


async def _stats(command: SlashCommand, args: list[str], services: SlackServices) -> str:
    stats = await services.admin.board_stats(Actor.user(command.user_id))
    by_status = ", ".join(f"{s} {n}" for s, n in sorted(stats.by_status.items())) or "no tasks"
    return (
        f"*Tasks*: {by_status}\n*Stale leases*: {stats.stale}\n*Blocked*: {stats.blocked}\n"
        f"*Outbox backlog*: {stats.outbox_backlog} undelivered"
        + (f", {stats.outbox_dead} dead (`/task-admin outbox`)" if stats.outbox_dead else "")
    )


HANDLERS: dict[str, Handler] = {
    "agent add": _agent_add,
    "agent list": _agent_list,
    "agent remove": _agent_remove,
    "agent disable": _agent_disable,
    "agent enable": _agent_enable,
    "agent key": _agent_key,
    "agent token": _agent_token,
    "agent tools": tools_command,
    "policy": _policy,
    "reconcile": _reconcile,
    "stats": _stats,
    "outbox": outbox_command,
}
