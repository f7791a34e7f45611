"""The ``threadwork`` command: serve, migrate, and inspect tasks and agents."""

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from bot.agents import AgentKind
from bot.errors import DomainError
from bot.logging import configure_logging
from bot.settings import Settings, SettingsError, load_settings
from bot.status import parse_status
from bot.task import Actor, TaskRef
from bot.views import agent_view, task_detail_view, task_view

if TYPE_CHECKING:  # the composition root (and the service's weight) loads only when a command runs
    from bot.root import Core

T = TypeVar("T")
#: Who the CLI acts as: the operator, who sees every task.
OPERATOR = Actor.system("cli")

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
tasks_app = typer.Typer(no_args_is_help=True, help="Inspect tasks.")
agents_app = typer.Typer(no_args_is_help=True, help="Inspect and register agents.")
app.add_typer(db_app, name="db")
app.add_typer(tasks_app, name="tasks")
app.add_typer(agents_app, name="agents")
secrets_app = typer.Typer(no_args_is_help=True, help="Agent secrets at rest.")
app.add_typer(secrets_app, name="secrets")

#: Where ``threadwork serve`` answers MCP by default: /mcp on its own port.
DEFAULT_MCP_URL = "http://127.0.0.1:3000/mcp"

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Prints ``error: message`` to stderr and exits with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    """Loads settings; a bad value stops the command with one line naming it, exit code 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc), code=2)


def run_with_core(work: "Callable[[Core], Awaitable[T]]", *, migrated: bool = True) -> T:
    """Runs ``work`` against an opened core; domain errors become ``error:`` lines, exit 1."""
    from bot.root import open_core

    settings = settings_or_exit()

    async def main() -> T:
        async with open_core(settings) as core:
            if migrated:
                await _require_current_schema(core)
            return await work(core)

    try:
        return asyncio.run(main())
    except DomainError as exc:
        fail(exc.message)


async def _require_current_schema(core: "Core") -> None:
    """Stops with a clear line unless the schema is at this code's head revision."""
    from bot.root import schema_revisions

    current, head = await schema_revisions(core)
    if current is None:
        fail("the database has no schema yet; run `threadwork db upgrade` first.")
    if current != head:
        fail(
            f"the database schema is at {current} but this threadwork needs {head}; "
            "run `threadwork db upgrade` first."
        )


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=False))


def print_table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    for line in [headers, *rows]:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


@app.command("serve")
def serve_command(
    socket_mode: Annotated[
        bool | None,
        typer.Option(
            "--socket-mode/--http",
            help="Take Slack events over Socket Mode (default when SLACK_APP_TOKEN is set).",
        ),
    ] = None,
) -> None:
    """Runs the service: migrations at start, Slack, the reconcile scheduler and the HTTP server."""
    from bot.root import (
        SecretsNotConfigured,
        SlackNotConfigured,
        check_secrets_before_start,
        check_slack_settings,
        serve,
    )

    settings = settings_or_exit()
    use_socket = socket_mode if socket_mode is not None else settings.slack_app_token is not None
    try:
        check_slack_settings(settings, use_socket)
        asyncio.run(check_secrets_before_start(settings))
    except (SlackNotConfigured, SecretsNotConfigured) as exc:
        fail(str(exc), code=2)
    configure_logging()
    try:
        asyncio.run(serve(settings, socket_mode=use_socket))
    except SecretsNotConfigured as exc:
        fail(str(exc), code=2)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Applies the database migrations."""

    from bot.root import migrate

    async def work(core: "Core") -> None:
        await migrate(core, revision)

    run_with_core(work, migrated=False)
    typer.echo(f"database upgraded to {revision}")


@tasks_app.command("list")
def tasks_list(
    status: Annotated[str | None, typer.Option(help="Only tasks in this status.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Lists tasks, optionally only those in one status."""
    wanted = None
    if status is not None:
        try:
            wanted = parse_status(status)
        except DomainError as exc:
            fail(exc.message, code=2)

    async def work(core: "Core") -> list[Any]:
        return (await core.queries.list_tasks(OPERATOR, wanted)).tasks

    tasks = run_with_core(work)
    if as_json:
        print_json([task_view(t) for t in tasks])
        return
    rows = [
        [str(t.ref), t.status.value, t.assignee or "-", str(t.attempts), t.title] for t in tasks
    ]
    print_table(rows, ["REF", "STATUS", "ASSIGNEE", "ATTEMPTS", "TITLE"])


@tasks_app.command("show")
def tasks_show(ref: str, as_json: JsonFlag = False) -> None:
    """Shows one task with its event log and thread messages."""

    async def work(core: "Core") -> dict[str, Any]:
        detail = await core.queries.task_detail(TaskRef.parse(ref), OPERATOR)
        return task_detail_view(detail)

    view = run_with_core(work)
    if as_json:
        print_json(view)
        return
    for key in ("ref", "title", "status", "assignee", "assigned_by", "attempts", "lease_epoch"):
        typer.echo(f"{key:>16}: {view[key] if view[key] is not None else '-'}")
    typer.echo(f"{'last_progress_at':>16}: {view['last_progress_at'] or '-'}")
    typer.echo("\nevents:")
    for event in view["events"]:
        typer.echo(
            f"  #{event['id']} {event['at']} {event['kind']} by {event['actor']} {event['data']}"
        )
    typer.echo("\nmessages:")
    for message in view["messages"]:
        typer.echo(f"  {message['ts']} {message['author']}: {message['text']}")


@agents_app.command("list")
def agents_list(as_json: JsonFlag = False) -> None:
    """Lists registered agents; keys are shown only as configured or not."""

    async def work(core: "Core") -> list[Any]:
        return await core.registry.list_agents()

    agents = run_with_core(work)
    if as_json:
        print_json([agent_view(a) for a in agents])
        return

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    rows = [
        [
            a.name,
            a.kind.value,
            a.display_name,
            a.slack_user_id or "-",
            yes(a.enabled),
            yes(a.api_key_configured),
        ]
        for a in agents
    ]
    print_table(rows, ["NAME", "KIND", "DISPLAY", "SLACK USER", "ENABLED", "API KEY"])


@agents_app.command("add")
def agents_add(
    name: str,
    kind: Annotated[AgentKind, typer.Option(help="How the agent runs.")] = AgentKind.EXTERNAL,
    display_name: Annotated[str | None, typer.Option(help="Name shown in Slack.")] = None,
    slack_user_id: Annotated[str | None, typer.Option(help="The agent's Slack user id.")] = None,
    slack_bot_id: Annotated[str | None, typer.Option(help="The agent's Slack bot id.")] = None,
) -> None:
    """Registers an agent (or updates one of the same name)."""

    async def work(core: "Core") -> Any:
        return await core.registry.register_agent(
            name, kind, display_name, slack_user_id=slack_user_id, slack_bot_id=slack_bot_id
        )

    registration = run_with_core(work)
    agent = registration.agent
    discarded = "; its stored API key was discarded" if registration.key_discarded else ""
    typer.echo(f"agent {agent.name} registered ({agent.kind.value}){discarded}")


@agents_app.command("set-key")
def agents_set_key(name: str) -> None:
    """Stores an agent's API key, read from standard input so it never lands in shell history."""
    api_key = (
        sys.stdin.readline().strip()
        if not sys.stdin.isatty()
        else typer.prompt("API key", hide_input=True)
    )

    async def work(core: "Core") -> None:
        await core.registry.set_api_key(name, api_key)

    run_with_core(work)
    typer.echo(f"API key stored for {name}")


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypts every stored agent key under THREADWORK_SECRET_KEY; keys stored under the
    old one are read with THREADWORK_SECRET_KEY_PREVIOUS, which may be unset afterwards."""

    async def work(core: "Core") -> Any:
        return await core.registry.rotate_secrets()

    rotation = run_with_core(work)
    changed = f"; {rotation.changed} changed meanwhile, left as set" if rotation.changed else ""
    typer.echo(
        f"re-encrypted {rotation.rotated} stored secret(s) under THREADWORK_SECRET_KEY{changed}"
    )


@app.command("mcp")
def mcp_bridge(
    token: Annotated[
        str,
        typer.Option(
            envvar="THREADWORK_MCP_TOKEN", help="The agent's token (or THREADWORK_MCP_TOKEN)."
        ),
    ],
    url: Annotated[
        str,
        typer.Option(
            envvar="THREADWORK_MCP_URL",
            help="threadwork's MCP endpoint (or THREADWORK_MCP_URL): /mcp on the service's port.",
        ),
    ] = DEFAULT_MCP_URL,
) -> None:
    """Serves threadwork's agent tools over stdio, for MCP clients that launch a command."""
    from bot.root import bridge_stdio

    if not url.startswith(("http://", "https://")):
        fail("--url must be an http(s) URL of threadwork's MCP endpoint.", code=2)
    asyncio.run(bridge_stdio(url, token))


def main() -> None:
    """Entry point of the ``threadwork`` console script."""
    app()
