"""The ``threadwork`` command: serve, migrate, and inspect tasks and agents."""

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
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


@agents_app.command(
    "tools", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def agents_tools(
    name: Annotated[str, typer.Argument(help="The built-in agent.")],
    words: Annotated[list[str] | None, typer.Argument(help="add ..., remove LABEL, list")] = None,
) -> None:
    """A built-in agent's MCP tool servers: `add LABEL stdio "COMMAND ARGS"` or `add LABEL
    http URL header=Name:value ...`, either with an optional `allow=tool1,tool2`; `remove
    LABEL`; `list`. Only what the operator permits is added (THREADWORK_TOOL_SERVER_COMMANDS,
    THREADWORK_TOOL_SERVER_HOSTS). Header values are stored encrypted and never printed."""
    from bot.tool_servers import ALL_USAGE, ToolServerAdd, ToolServerRemove, parse_request

    try:
        request = parse_request(words or [])
    except DomainError as exc:
        usage = ALL_USAGE.replace("/task-admin agent", "threadwork agents")
        fail(f"{exc.message}\nusage:\n{usage}", code=2)

    async def work(core: "Core") -> str:
        if isinstance(request, ToolServerAdd):
            server = request.server
            replaced = await core.admin.add_tool_server(OPERATOR, name, request)
            verb = "replaced" if replaced else "added"
            return f"tool server {server.label} {verb} for {name} ({server.transport.value})"
        if isinstance(request, ToolServerRemove):
            await core.admin.remove_tool_server(OPERATOR, name, request.label)
            return f"tool server {request.label} removed from {name}"
        servers = await core.admin.list_tool_servers(OPERATOR, name)
        lines = [
            s.describe() + (f" · not started: {s.denied}" if s.denied else "") for s in servers
        ]
        return "\n".join(lines) or f"{name} has no tool servers"

    typer.echo(run_with_core(work))


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


@app.command("worker")
def worker_command(
    command: Annotated[
        list[str] | None,
        typer.Argument(help="The command each attempt runs, after -- (instead of --preset)."),
    ] = None,
    url: Annotated[
        str,
        typer.Option(
            envvar="THREADWORK_MCP_URL", help="threadwork's MCP endpoint (or THREADWORK_MCP_URL)."
        ),
    ] = DEFAULT_MCP_URL,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="THREADWORK_MCP_TOKEN", help="The agent's token (or THREADWORK_MCP_TOKEN)."
        ),
    ] = None,
    repo: Annotated[
        Path | None, typer.Option(help="A git repository: each task works in a worktree of it.")
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="A directory: each task works in a directory under it.")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Tasks run at once.")] = 1,
    preset: Annotated[
        str | None, typer.Option(help="The CLI to run: claude-code, codex or gemini.")
    ] = None,
    check_every: Annotated[float, typer.Option(hidden=True, min=0.1)] = 2.0,
) -> None:
    """Runs a coding-agent CLI on each task dispatched to the token's agent, until SIGTERM."""
    if not url.startswith(("http://", "https://")):
        fail("--url must be an http(s) URL of threadwork's MCP endpoint.", code=2)
    if not token:
        fail("give the agent's token with --token or THREADWORK_MCP_TOKEN.", code=2)
    # The worker is a client of the service, wired on its own (channels.agent_cli.main): it
    # builds none of the service's objects, so the composition root is not loaded.
    from channels.agent_cli.main import WorkerConfigError, WorkerOptions, worker_main

    options = WorkerOptions(
        url, token, repo, workdir, concurrency, preset, tuple(command or ()), check_every
    )
    configure_logging()
    try:
        code = asyncio.run(worker_main(options, os.environ))
    except WorkerConfigError as exc:
        fail(str(exc), code=2)
    raise typer.Exit(code)


@app.command("sandbox")
def sandbox_command(
    port: Annotated[int, typer.Option(min=0, max=65535, help="The page's port (0: any).")] = 3000,
    db: Annotated[
        Path, typer.Option(help="The SQLite file (kept, with the workspace, for the next run).")
    ] = Path("threadwork-sandbox.db"),
    lease_ttl: Annotated[
        float, typer.Option(min=1, help="Seconds a lease lasts without progress.")
    ] = 30.0,
    reconcile_every: Annotated[
        float, typer.Option(min=0.1, help="Seconds between two reconciles.")
    ] = 5.0,
    log_level: Annotated[str, typer.Option(help="The service's log level.")] = "WARNING",
    demo_word_s: Annotated[float, typer.Option(hidden=True, min=0)] = 0.04,
) -> None:
    """Runs the real service against a Slack workspace of its own, in your browser: no Slack
    app, no credentials, no network. Open the URL it prints."""
    # The sandbox stands where Slack and a browser would, around the service that bot.root
    # builds (channels.sandbox.main): loaded only when this command runs.
    from channels.sandbox.main import SandboxOptions, run_sandbox

    options = SandboxOptions(
        port=port,
        db=db,
        lease_ttl_s=lease_ttl,
        reconcile_every_s=reconcile_every,
        demo_word_s=demo_word_s,  # the benchmark's 0 measures threadwork, not the script
    )
    configure_logging(log_level.upper())
    try:
        asyncio.run(run_sandbox(options, os.environ))
    except OSError as exc:  # the port is taken, or the database's directory is not there
        fail(f"the sandbox could not start: {exc.strerror or exc}; try another --port or --db", 2)


def main() -> None:
    """Entry point of the ``threadwork`` console script."""
    app()
