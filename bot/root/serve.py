"""The root's process: ``serve`` until SIGINT or SIGTERM, and the stdio bridge for MCP clients
that only launch local commands."""

import asyncio
import gc
import signal as signals

from bot.root.core import Overrides
from bot.root.service import open_service
from bot.root.slack import check_slack_settings
from bot.settings import Settings
from channels.mcp.bridge import run_stdio_bridge


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    socket_mode: bool = False,
    overrides: Overrides | None = None,
) -> None:
    """Runs the service until SIGINT or SIGTERM (or ``stop``), then closes it cleanly."""
    check_slack_settings(settings, socket_mode)
    stop = stop or _stop_on_signals()
    async with open_service(settings, overrides, socket_mode):
        freeze_start_up()
        await stop.wait()


def freeze_start_up() -> None:
    """Moves what start-up built (modules, SDK schemas, caches: about 300,000 objects) out of
    the garbage collector's reach. Otherwise each full collection walks all of them, a pause
    of about 200 ms on this service's hosts that stalls every request in flight."""
    gc.collect()
    gc.freeze()


async def bridge_stdio(url: str, token: str) -> None:
    """Serves the agent tools on stdin and stdout, each call relayed to the endpoint at ``url``
    as the token's agent (for MCP clients that only launch local commands)."""
    await run_stdio_bridge(url, token)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for a clean shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signals.SIGINT, signals.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
