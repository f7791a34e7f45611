"""``threadwork worker``'s wiring: options in, the worker run until stopped, an exit code out.

The worker's process is a client of the service and builds none of its objects, so this is its
composition root rather than ``bot.root``. Everything long-lived is built here and closed in
reverse order: the MCP configuration files, the session with the service, the worker. The
environment is passed in (the process's own, by the CLI), never read deep inside.
"""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from channels.agent_cli.attempt import Command
from channels.agent_cli.link import Link, TokenRefused
from channels.agent_cli.mcp_config import McpConfig, mcp_config
from channels.agent_cli.presets import (
    GEMINI_SETTINGS,
    MCP_CONFIG,
    MCP_URL,
    CommandError,
    Preset,
    choose,
    expand,
)
from channels.agent_cli.worker import CHECK_EVERY_S, Worker, WorkerSettings
from channels.agent_cli.workspaces import GitWorktrees, TaskDirs, WorkspaceError, Workspaces

logger = structlog.get_logger(__name__)

#: Exit codes: stopped cleanly; refused its configuration or token.
EXIT_OK, EXIT_USAGE = 0, 2


class WorkerConfigError(Exception):
    """The options cannot work (a bad repository, a missing command); the message says why."""


@dataclass(frozen=True)
class WorkerOptions:
    url: str
    token: str
    repo: Path | None = None
    workdir: Path | None = None
    concurrency: int = 1
    preset: str | None = None
    command: tuple[str, ...] = ()
    check_every_s: float = CHECK_EVERY_S


async def worker_main(options: WorkerOptions, environ: Mapping[str, str]) -> int:
    """Runs the worker until SIGINT or SIGTERM; returns the process's exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return await run_worker(options, environ, stop)


async def run_worker(
    options: WorkerOptions, environ: Mapping[str, str], stop: asyncio.Event
) -> int:
    """Runs the worker until ``stop`` is set; returns the process's exit code."""
    # The SDK logs each failed request of a session the service dropped; the link says once.
    logging.getLogger("mcp").setLevel(logging.CRITICAL)
    preset, workspaces = _preset(options), await _workspaces(options)
    with mcp_config(options.url, options.token) as config:
        link = Link(options.url, options.token)
        command = _command(options, preset, config, environ)
        settings = WorkerSettings(options.concurrency, options.check_every_s)
        worker = Worker(link, workspaces, command, settings)
        logger.info(
            "worker.started",
            url=options.url,
            command=command.name,
            concurrency=options.concurrency,
            workspace=str(options.repo or options.workdir),
        )
        code = await _serve(worker, stop)
    logger.info("worker.stopped", code=code)
    return code


async def _serve(worker: Worker, stop: asyncio.Event) -> int:
    serving = asyncio.create_task(worker.run(), name="worker")
    stopping = asyncio.create_task(stop.wait(), name="worker-stop")
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    serving.cancel()
    code = EXIT_OK
    try:
        await serving
    except asyncio.CancelledError:
        pass
    except TokenRefused as exc:
        logger.error("worker.token_refused", error=str(exc))
        code = EXIT_USAGE
    with contextlib.suppress(TokenRefused):
        await worker.shutdown()
    return code


def _preset(options: WorkerOptions) -> Preset:
    try:
        return choose(options.preset, options.command)
    except CommandError as exc:
        raise WorkerConfigError(str(exc)) from None


async def _workspaces(options: WorkerOptions) -> Workspaces:
    if (options.repo is None) == (options.workdir is None):
        raise WorkerConfigError("give --repo PATH (a git worktree per task) or --workdir DIR.")
    if options.workdir is not None:
        return TaskDirs(options.workdir.resolve())
    assert options.repo is not None
    worktrees = GitWorktrees(options.repo.resolve())
    try:
        await worktrees.check()
    except (WorkspaceError, OSError) as exc:
        raise WorkerConfigError(f"--repo {options.repo} is not a git repository: {exc}") from None
    return worktrees


def _command(
    options: WorkerOptions, preset: Preset, config: McpConfig, environ: Mapping[str, str]
) -> Command:
    """The command every attempt runs, with the worker's environment and threadwork's."""
    values = {
        MCP_CONFIG: str(config.path),
        MCP_URL: options.url,
        GEMINI_SETTINGS: str(config.gemini_settings),
    }
    launch = expand(preset, values)
    env = (
        dict(environ)
        | dict(launch.env)
        | {
            "THREADWORK_MCP_URL": options.url,
            "THREADWORK_MCP_TOKEN": options.token,
            "THREADWORK_MCP_CONFIG": str(config.path),
        }
    )
    return Command(launch.argv, env, options.preset or _name(launch.argv))


def _name(argv: Sequence[str]) -> str:
    return Path(argv[0]).name if argv else "command"
