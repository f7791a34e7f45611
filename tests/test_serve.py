"""``threadwork serve`` as a real process: probes, the scheduled reconcile, a clean stop.

The process runs on the real clock, so its lease TTL and reconcile interval are one second;
every wait polls against a deadline and fails with the server's log when it runs out.
"""

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, TypeVar

import aiohttp
import pytest

from bot.root import Core, open_core
from bot.settings import Settings
from bot.status import TaskStatus
from bot.task import Actor, LeasePolicy, Task, TaskEvent
from tests.slack.standin import TOKEN, SlackStandIn

THREADWORK = Path(sys.executable).parent / "threadwork"
POLICY = LeasePolicy(lease_ttl=timedelta(seconds=1), max_dispatch_attempts=2)
START_TIMEOUT_S = 20
RECONCILE_TIMEOUT_S = 15
STOP_TIMEOUT_S = 5
POLL_S = 0.05

T = TypeVar("T")


@dataclass(frozen=True)
class Server:
    """A running ``threadwork serve`` and where to reach it."""

    process: asyncio.subprocess.Process
    base_url: str
    database_url: str
    log: Path

    def output(self) -> str:
        """What the server has logged so far, for failure messages."""
        return self.log.read_text(errors="replace")


def free_port() -> int:
    """A port nothing listens on right now, picked by the kernel."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_for(
    check: Callable[[], Awaitable[T | None]], server: Server, timeout_s: float, what: str
) -> T:
    """Polls ``check`` until it returns a value, failing after ``timeout_s`` or if serve exits."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if server.process.returncode is not None:
            pytest.fail(
                f"serve exited ({server.process.returncode}) before {what}:\n{server.output()}"
            )
        value = await check()
        if value is not None:
            return value
        await asyncio.sleep(POLL_S)
    pytest.fail(f"no {what} within {timeout_s}s:\n{server.output()}")


@pytest.fixture
def log_sink(tmp_path: Path) -> Iterator[IO[bytes]]:
    with (tmp_path / "serve.log").open("wb") as sink:
        yield sink


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    """The Slack Web API the served process talks to."""
    standin = SlackStandIn()
    await standin.start()
    yield standin
    await standin.close()


def serve_env(tmp_path: Path, port: int, database_url: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp_path),
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "THREADWORK_LEASE_TTL": "1",
        "THREADWORK_RECONCILE_INTERVAL": "1",
        "THREADWORK_MAX_DISPATCH_ATTEMPTS": "2",
    }


@pytest.fixture
async def server(tmp_path: Path, log_sink: IO[bytes], slack: SlackStandIn) -> AsyncIterator[Server]:
    """Starts serve on a free port and a fresh SQLite file; kills it if a test left it running."""
    port = free_port()
    database_url = f"sqlite:///{tmp_path / 'serve.db'}"
    env = serve_env(tmp_path, port, database_url) | {
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": "serve-test-signing-secret",
        "SLACK_API_URL": slack.url,
    }
    process = await asyncio.create_subprocess_exec(
        str(THREADWORK),
        "serve",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log_sink,
        stderr=log_sink,
    )
    server = Server(process, f"http://127.0.0.1:{port}", database_url, tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as http:
            await wait_for(
                lambda: get_status(http, f"{server.base_url}/healthz"),
                server,
                START_TIMEOUT_S,
                "200 from /healthz",
            )
        yield server
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def get_status(http: aiohttp.ClientSession, url: str) -> int | None:
    """200 when ``url`` answers 200; None while nothing listens or it answers otherwise."""
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return 200 if response.status == 200 else None
    except (aiohttp.ClientConnectionError, TimeoutError):
        return None


@pytest.fixture
async def served(server: Server) -> AsyncIterator[Core]:
    """The served database's core, opened in this process once serve has migrated it."""
    settings = Settings(
        DATABASE_URL=server.database_url,
        THREADWORK_LEASE_TTL=POLICY.lease_ttl.total_seconds(),
        THREADWORK_MAX_DISPATCH_ATTEMPTS=POLICY.max_dispatch_attempts,
    )
    async with open_core(settings) as core:
        yield core


async def test_serve_answers_healthz_and_readyz_with_database_and_scheduler_up(
    server: Server,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/healthz") as health:
            assert (health.status, await health.json()) == (200, {"status": "ok"})
        async with http.get(f"{server.base_url}/readyz") as ready:
            assert (ready.status, await ready.json()) == (
                200,
                {"ready": True, "checks": {"database": True, "scheduler": True, "slack": True}},
            )


async def test_the_scheduled_reconcile_redispatches_a_lapsed_task_then_blocks_it(
    server: Server, served: Core, slack: SlackStandIn
) -> None:
    registry, board, served_store = served.registry, served.board, served.store
    await registry.add_agent("claude-1")
    task = await board.create_task("C123", "Nobody will work this", Actor.user("U1"))
    await board.assign_task(task.ref, "claude-1", by="U1")

    async def blocked() -> tuple[Task, list[TaskEvent]] | None:
        async with served_store.read() as reader:
            current = await reader.get_task(task.ref)
            assert current is not None
            if current.status != TaskStatus.BLOCKED:
                return None
            return current, await reader.list_events(task.id)

    final, events = await wait_for(blocked, server, RECONCILE_TIMEOUT_S, "blocked task")

    assert [(e.kind.value, str(e.actor)) for e in events] == [
        ("created", "user:U1"),
        ("assigned", "user:U1"),
        ("dispatched", "user:U1"),
        ("redispatched", "system:reconcile"),
        ("blocked", "system:reconcile"),
    ]
    assert events[3].data["attempt"] == 2
    assert events[4].data["attempts"] == 2
    assert (final.claimed_by, final.assignee, final.attempts, final.lease_epoch) == (
        None,
        "claude-1",
        2,
        2,
    )

    async def escalated() -> list[str] | None:
        kinds = [(m.get("metadata") or {}).get("event_type") for m in slack.posts("C123")]
        return kinds if "threadwork_escalation" in kinds else None

    kinds = await wait_for(escalated, server, RECONCILE_TIMEOUT_S, "escalation posted to Slack")
    assert kinds == [
        "threadwork_card",
        "threadwork_directive",
        "threadwork_directive",
        "threadwork_escalation",
    ]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_serve_stops_cleanly_with_exit_code_0_on_a_stop_signal(
    server: Server, stop: signal.Signals
) -> None:
    server.process.send_signal(stop)

    async with asyncio.timeout(STOP_TIMEOUT_S):
        code = await server.process.wait()

    assert code == 0, server.output()
    assert "serve.stopped" in server.output()


async def test_serve_without_slack_credentials_names_them_and_exits_2(tmp_path: Path) -> None:
    env = serve_env(tmp_path, free_port(), f"sqlite:///{tmp_path / 'serve.db'}")
    process = await asyncio.create_subprocess_exec(
        str(THREADWORK),
        "serve",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(START_TIMEOUT_S):
        stdout, stderr = await process.communicate()
    assert process.returncode == 2
    [line] = stderr.decode().splitlines()
    assert "SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET not set" in line
    assert "README" in line
    assert stdout == b""
