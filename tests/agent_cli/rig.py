"""A real ``threadwork serve`` and real ``threadwork worker`` processes, for the worker's tests and
its benchmark.

The service runs as in ``tests.processes`` (one replica on SQLite, Slack's stand-in); people's
commands reach it signed as Slack signs them, so every change commits in the service and wakes
its agents' long polls. Each worker is its own process running ``fake_cli.py`` (or any command)
against a git repository, with its log and the fake CLI's records in a directory of its own.
Every wait polls against a deadline and fails with the service's and the workers' logs.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from bot.queries import TaskDetail
from bot.root import Core, migrate, open_core
from bot.settings import Settings
from bot.task import Actor, TaskRef
from tests.processes import (
    ADMIN,
    ALICE,
    SIGNING_SECRET,
    THREADWORK,
    Replicas,
    created_ref,
    open_replicas,
)
from tests.slack.conftest import signed
from tests.slack.standin import SlackStandIn

FAKE_CLI = Path(__file__).with_name("fake_cli.py")
OPERATOR = Actor.system("cli")
#: The service's settings: the reconcile every second, and room for a test's tool calls.
SERVICE = {
    "THREADWORK_RECONCILE_INTERVAL": "1",
    "THREADWORK_AGENT_CALLS_PER_MINUTE": "100000",
}
WORKER_STOP_TIMEOUT_S = 20.0

T = TypeVar("T")


@dataclass
class WorkerProcess:
    """One ``threadwork worker``; ``records`` is where its fake CLI writes."""

    process: asyncio.subprocess.Process
    log: Path
    records: Path
    ending: bool = False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def runs(self, ref: str) -> list[dict[str, Any]]:
        """What the fake CLI recorded for task ``ref``, in order."""
        path = self.records / f"{ref.replace('#', '-')}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def events(self, ref: str, event: str) -> list[dict[str, Any]]:
        return [r for r in self.runs(ref) if r["event"] == event]

    async def stop(self) -> int:
        """SIGTERM, as a deploy stops it; its exit code."""
        self.ending = True
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WORKER_STOP_TIMEOUT_S):
            return await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL: a crash, nothing handed back."""
        self.ending = True
        self.process.kill()
        await self.process.wait()


@dataclass
class Rig:
    """The service, its database as the core reads it, a repository, and the workers."""

    replicas: Replicas
    core: Core
    repo: Path
    directory: Path
    tokens: dict[str, str]
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def slack(self) -> SlackStandIn:
        return self.replicas.slack

    def output(self) -> str:
        return self.replicas.output() + "\n" + self.worker_logs()

    def worker_logs(self) -> str:
        return "\n".join(
            f"--- worker {n}\n{w.output()[-6000:]}" for n, w in enumerate(self.workers)
        )

    async def wait_for(
        self, check: Callable[[], Awaitable[T | None]], timeout_s: float, what: str
    ) -> T:
        """Polls ``check`` until it returns a value; fails with every log after the timeout,
        or at once when a worker exits that nobody stopped."""

        async def checked() -> T | None:
            for n, worker in enumerate(self.workers):
                code = worker.process.returncode
                if code is not None and not worker.ending:
                    raise AssertionError(
                        f"worker {n} exited ({code}) before {what}\n{self.output()}"
                    )
            return await check()

        try:
            return await self.replicas.wait_for(checked, timeout_s, what)
        except AssertionError as failed:
            raise AssertionError(f"{failed}\n{self.worker_logs()}") from None

    async def command(self, text: str, channel: str, user: str = ALICE) -> str:
        return await self.replicas.command(0, text, channel, user)

    async def press(self, action_id: str, ref: str, user: str = ALICE) -> None:
        """Clicks a button of the task's card, as Slack posts the click."""
        channel = TaskRef.parse(ref).channel_id
        payload = {
            "type": "block_actions",
            "user": {"id": user},
            "channel": {"id": channel},
            "team": {"id": "T1"},
            "response_url": f"https://hooks.invalid/response/{action_id}/{ref}",
            "actions": [{"action_id": action_id, "value": ref, "type": "button"}],
        }
        body = urlencode({"payload": json.dumps(payload)})
        headers = {"Content-Type": "application/x-www-form-urlencoded"} | signed(
            body, secret=SIGNING_SECRET
        )
        url = self.replicas[0].url + "/slack/events"
        async with self.replicas.http.post(url, data=body, headers=headers) as answer:
            assert answer.status == 200, await answer.text()

    async def assigned(self, channel: str, agent: str, title: str = "Fix the flaky test") -> str:
        """A task created and assigned by signed ``/task`` commands; its ref."""
        ref = created_ref(await self.command(f"new {title}", channel))
        number = TaskRef.parse(ref).number
        reply = await self.command(f"assign {number} {agent}", channel)
        assert "Assigned" in reply, reply
        return ref

    async def detail(self, ref: str) -> TaskDetail:
        return await self.core.queries.task_detail(TaskRef.parse(ref), OPERATOR)

    async def worker(
        self,
        agent: str,
        command: Sequence[str],
        *options: str,
        records: Path | None = None,
        token: str | None = None,
    ) -> WorkerProcess:
        """Starts ``threadwork worker`` for ``agent`` (with its token, unless ``token`` is
        given) on the repository."""
        n = len(self.workers)
        log = self.directory / f"worker-{n}.log"
        records = records or self.directory / f"records-{n}"
        records.mkdir(parents=True, exist_ok=True)
        assert self.replicas[0].running
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self.directory),
            "THREADWORK_MCP_TOKEN": token or self.tokens[agent],
            "FAKE_CLI_RECORDS": str(records),
        }
        args = ["worker", "--url", self.replicas[0].url + "/mcp", *options]
        if "--workdir" not in options:
            args += ["--repo", str(self.repo)]
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                str(THREADWORK),
                *args,
                "--",
                *command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
        worker = WorkerProcess(process, log, records)
        self.workers.append(worker)
        return worker

    async def close_workers(self) -> None:
        for worker in self.workers:
            if worker.process.returncode is None:
                worker.ending = True
                worker.process.kill()
                await worker.process.wait()


def fake_cli(scenario: str) -> list[str]:
    return [sys.executable, str(FAKE_CLI), scenario]


def make_repo(path: Path) -> Path:
    """A git repository with one commit."""
    path.mkdir(parents=True)

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)  # noqa: S603, S607 - fixed arguments

    git("init", "-q", "-b", "main")
    (path / "README.md").write_text("a project\n")
    git("add", "README.md")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "initial")
    return path


async def seed(
    database_url: str, agents: Sequence[str], ttls: Mapping[str, float]
) -> dict[str, str]:
    """Migrates the database, registers the external ``agents`` and sets the channels' lease
    TTLs; returns each agent's MCP token."""
    tokens = {}
    async with open_core(Settings(DATABASE_URL=database_url)) as core:
        await migrate(core)
        for agent in agents:
            await core.registry.add_agent(agent)
            tokens[agent] = await core.registry.issue_token(agent)
        for channel, ttl in ttls.items():
            await core.channel_policies.set_channel_policy(
                channel, ADMIN, lease_ttl_s=ttl, max_attempts=5
            )
    return tokens


@asynccontextmanager
async def open_rig(
    directory: Path,
    agents: Sequence[str],
    channels: Sequence[str],
    ttls: Mapping[str, float] | None = None,
) -> AsyncIterator[Rig]:
    """The service running, on a fresh SQLite file, with ALICE and ADMIN in ``channels``."""
    database_url = f"sqlite:///{directory / 'threadwork.db'}"
    tokens = await seed(database_url, agents, ttls or {})
    slack = SlackStandIn(members={c: {ALICE, ADMIN} for c in channels})
    await slack.start()
    try:
        async with (
            open_replicas(slack, database_url, directory, SERVICE) as replicas,
            open_core(Settings(DATABASE_URL=database_url)) as core,
        ):
            await replicas.start(0)
            rig = Rig(replicas, core, make_repo(directory / "repo"), directory, tokens)
            try:
                yield rig
            finally:
                await rig.close_workers()
    finally:
        await slack.close()
