"""The servers under test, each run in its own spawned process, and the timed Slack stand-in."""

import asyncio
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bench.gc_pauses import record_gc_pauses
from bot.logging import configure_logging
from bot.root import migrate, open_core, serve
from bot.settings import Settings
from channels.slack.adapter_http import EVENTS_PATH
from tests.slack.conftest import AGENT_USER, ALICE, SECRET, settings_for
from tests.slack.standin import TOKEN, SlackStandIn

SPAWN = multiprocessing.get_context("spawn")
#: Server start-up has no event to wait on, so readiness is polled this often, this many times.
HEALTH_POLL_SECONDS = 0.1
HEALTH_POLLS = 300


@dataclass(frozen=True)
class Arrival:
    """When (perf_counter) a message reached the stand-in, and the ts it was given."""

    at: float
    ts: str


@dataclass
class TimedStandIn(SlackStandIn):
    """The Slack stand-in, noting when each message with metadata arrived, by type and task."""

    arrivals: dict[str, Arrival] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[Arrival]] = field(default_factory=dict)

    def _conversations_members(self, args: dict[str, Any]) -> dict[str, Any]:
        """The benchmark's one person is a member of every channel it uses."""
        return {"ok": True, "members": [ALICE], "response_metadata": {"next_cursor": ""}}

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        arrived = time.perf_counter()
        reply = super()._chat_postMessage(args)
        metadata = args.get("metadata") or {}
        key = f"{metadata.get('event_type')}:{metadata.get('event_payload', {}).get('task')}"
        arrival = self.arrivals.setdefault(key, Arrival(arrived, reply["ts"]))
        waiter = self.waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(arrival)
        return reply

    async def arrival(self, event_type: str, ref: str, within: float = 10.0) -> Arrival:
        """The first post of ``event_type`` for task ``ref``, waiting up to ``within`` s for it."""
        key = f"{event_type}:{ref}"
        if key in self.arrivals:
            return self.arrivals[key]
        waiter = self.waiters.setdefault(key, asyncio.get_running_loop().create_future())
        async with asyncio.timeout(within):
            return await asyncio.shield(waiter)


def run_threadwork(
    database_url: str, slack_url: str, port: int, log_path: str, gc_log: str | None = None
) -> None:
    """Child process: migrates, registers agent ``coder``, then runs ``serve`` until SIGTERM.

    The MCP endpoint is served at /mcp on ``port``, as by default. With ``gc_log``, the garbage
    collector's pauses are written there (``bench.gc_pauses``).
    """
    _log_to(log_path)
    if gc_log is not None:
        record_gc_pauses(gc_log)
    configure_logging()  # as `threadwork serve` does
    settings = settings_for(database_url, slack_url).model_copy(update={"port": port})
    asyncio.run(_seed_and_serve(settings))


async def _seed_and_serve(settings: Settings) -> None:
    async with open_core(settings) as core:
        await migrate(core)
        await core.registry.add_agent("coder", display_name="Coder", slack_user_id=AGENT_USER)
    await serve(settings)


def run_bare_bolt(slack_url: str, port: int, log_path: str) -> None:
    """Child process: a Bolt AsyncApp with default settings behind aiohttp, until SIGTERM."""
    _log_to(log_path)
    asyncio.run(_serve_bare_bolt(slack_url, port))


def bare_bolt_app(slack_url: str) -> web.Application:
    """Bolt's own aiohttp wiring, with a no-op ``message`` listener; /healthz for start-up."""
    bolt = AsyncApp(client=AsyncWebClient(token=TOKEN, base_url=slack_url), signing_secret=SECRET)

    @bolt.event("message")
    async def ignore_message() -> None:
        return None

    async def events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post(EVENTS_PATH, events)
    app.router.add_get("/healthz", healthz)
    return app


async def _serve_bare_bolt(slack_url: str, port: int) -> None:
    runner = web.AppRunner(bare_bolt_app(slack_url), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _log_to(path: str) -> None:
    """Sends this process's stdout and stderr to ``path``, as a deployment would to its logs."""
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system, all threads) process ``pid`` has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def child_server(
    target: Callable[..., None],
    args: tuple[Any, ...],
    health_url: str,
    http: aiohttp.ClientSession,
) -> AsyncIterator[BaseProcess]:
    """Runs ``target(*args)`` in a spawned process, yields it once ``health_url`` answers 200,
    and stops it with SIGTERM (SIGKILL if it has not exited 15 s later)."""
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    try:
        await _wait_healthy(http, health_url, process)
        yield process
    finally:
        process.terminate()
        await asyncio.to_thread(process.join, 15)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, 5)


async def _wait_healthy(http: aiohttp.ClientSession, url: str, process: BaseProcess) -> None:
    for _ in range(HEALTH_POLLS):
        if not process.is_alive():
            raise RuntimeError(f"the server process exited with {process.exitcode}")
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(HEALTH_POLL_SECONDS)
    raise TimeoutError(f"{url} did not answer 200 within {HEALTH_POLLS * HEALTH_POLL_SECONDS} s")
