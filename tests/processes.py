"""Several ``threadwork serve`` processes on one database and one Slack stand-in.

For the crash and replica tests and the takeover benchmark: each replica is a slot that runs
one real ``serve`` process at a time, on its own port and with its own log, which can be
killed (SIGKILL, as a crash), stopped (SIGTERM, as a deploy) and started again. Slash commands
reach a replica signed as Slack signs them; a backlog can be written through the core before
any replica runs. ``Database`` reads what the replicas hold and decided, ``posts`` what the
stand-in received and when. Every wait polls with a deadline and fails with the tail of every
replica's log; a replica that exits on its own fails the wait at once.
"""

import asyncio
import itertools
import os
import re
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.outbox import OutboxKind, OutboxState
from bot.root import migrate, open_core
from bot.settings import Settings
from bot.task import Actor
from store.database import create_engine
from store.schema import HELD_WAKEUP_SQL, agent_wakeups, outbox, task_events, tasks, workers
from tests.slack.conftest import signed, slash_command
from tests.slack.standin import TOKEN, SlackStandIn

THREADWORK = Path(sys.executable).parent / "threadwork"
SIGNING_SECRET = "processes-test-signing-secret"
#: A threadwork admin (THREADWORK_ADMINS) and a person.
ADMIN = "UADMIN01"
ALICE = "UALICE01"
#: An agent that never answers, so its leases lapse.
AGENT, AGENT_USER = "agent-1", "UAGENT01"
#: Several interpreters importing at once on a loaded 2-core machine take their time.
START_TIMEOUT_S = 40.0
#: A SIGTERM waits for acknowledged work up to 10 s (bot.root.SHUTDOWN_DRAIN_SECONDS).
STOP_TIMEOUT_S = 20.0
POLL_S = 0.05
LOG_TAIL_LINES = 40
#: Library lines left out of the logs' tails: the scheduler's every tick, and start-up chatter.
_QUIET = ("INFO apscheduler", "INFO alembic", "INFO mcp.server", "WARNING slack_bolt")

T = TypeVar("T")


def free_port() -> int:
    """A port nothing listens on right now, picked by the kernel."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_env(
    database_url: str, slack: SlackStandIn, home: Path, **settings: str
) -> dict[str, str]:
    """The environment of one ``serve``: the database and the stand-in as Slack, with
    ``settings`` (environment variables: THREADWORK_..., ANTHROPIC_...) on top."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.url,
        "THREADWORK_ADMINS": ADMIN,
        # Tests read threads far more often than an app's Tier 3 budget allows.
        "THREADWORK_SLACK_HISTORY_PER_MINUTE": "10000",
    } | settings


@dataclass
class Replica:
    """One slot for a ``serve`` process; a restart keeps the slot and gets a new port and log."""

    name: str
    directory: Path
    process: asyncio.subprocess.Process | None = None
    port: int = 0
    logs: list[Path] = field(default_factory=list)
    #: Set when the test ends the process, so its exit is not a crash.
    ending: bool = False
    #: Wall-clock times (seconds since the epoch, as the stand-in's ts) of the current run's
    #: spawn and of its first 200 from /healthz.
    spawned_at: float = 0.0
    ready_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} never started"
        return self.process.pid

    def crashed(self) -> bool:
        """Whether the process exited without the test ending it."""
        return self.process is not None and self.process.returncode is not None and not self.ending

    def output(self, lines: int = LOG_TAIL_LINES) -> str:
        """The tail of each log this slot wrote, newest run last."""
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            tail = [line for line in text.splitlines() if not line.startswith(_QUIET)][-lines:]
            parts.append(f"--- {self.name}: {log.name} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(parts)


@dataclass
class Replicas:
    """``serve`` processes on one database and one Slack stand-in (see the module docstring)."""

    slack: SlackStandIn
    database_url: str
    directory: Path
    http: aiohttp.ClientSession
    #: Environment variables every replica runs with, over ``serve_env``'s.
    settings: dict[str, str]
    slots: list[Replica] = field(default_factory=list)
    _requests: "itertools.count[int]" = field(default_factory=lambda: itertools.count(1))

    def __getitem__(self, index: int) -> Replica:
        return self.slots[index]

    def output(self) -> str:
        """The tail of every replica's logs, for failure messages."""
        return "\n".join(slot.output() for slot in self.slots)

    def fail(self, message: str) -> NoReturn:
        raise AssertionError(f"{message}\n{self.output()}")

    async def start(self, index: int, same_port: bool = False) -> Replica:
        """Starts (or restarts) replica ``index`` and returns once it answers /healthz; with
        ``same_port``, a restart listens where the last run did (its clients keep the URL)."""
        while len(self.slots) <= index:
            name = f"replica-{len(self.slots)}"
            self.slots.append(Replica(name, self.directory / name))
        slot = self.slots[index]
        assert not slot.running, f"{slot.name} is running already"
        slot.directory.mkdir(parents=True, exist_ok=True)
        slot.port = slot.port if same_port and slot.port else free_port()
        log = slot.directory / f"serve-{len(slot.logs) + 1}.log"
        slot.logs.append(log)
        env = serve_env(self.database_url, self.slack, slot.directory, **self.settings)
        slot.spawned_at = time.time()
        with log.open("wb") as sink:
            slot.process = await asyncio.create_subprocess_exec(
                str(THREADWORK),
                "serve",
                env=env | {"PORT": str(slot.port)},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
        slot.ending = False
        await self.wait_for(lambda: self._healthy(slot), START_TIMEOUT_S, f"{slot.name} healthy")
        slot.ready_at = time.time()
        return slot

    async def start_all(self, count: int) -> list[Replica]:
        """Starts replicas 0 to ``count`` - 1 at once."""
        return list(await asyncio.gather(*(self.start(i) for i in range(count))))

    async def kill(self, index: int) -> None:
        """Kills replica ``index`` with SIGKILL (a crash: nothing is handed back)."""
        slot, process = self._running(index)
        slot.ending = True
        process.kill()
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await process.wait()

    async def stop(self, index: int) -> int:
        """Sends SIGTERM to replica ``index`` and returns its exit code once it exited."""
        slot, process = self._running(index)
        slot.ending = True
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                return await process.wait()
        except TimeoutError:
            self.fail(f"{slot.name} did not exit within {STOP_TIMEOUT_S}s of SIGTERM")

    def _running(self, index: int) -> tuple[Replica, asyncio.subprocess.Process]:
        slot = self.slots[index]
        assert slot.process is not None, f"{slot.name} never started"
        assert slot.running, f"{slot.name} is not running"
        return slot, slot.process

    async def close(self) -> None:
        """Kills every replica still running (a test that failed half-way)."""
        for slot in self.slots:
            if slot.process is not None and slot.running:
                slot.ending = True
                slot.process.kill()
                await slot.process.wait()

    async def wait_for(
        self, check: Callable[[], Awaitable[T | None]], timeout_s: float, what: str
    ) -> T:
        """Polls ``check`` until it returns a value; fails after ``timeout_s``, or as soon as a
        replica exits that nobody stopped, with every replica's log."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            for slot in self.slots:
                if slot.crashed():
                    assert slot.process is not None
                    code = slot.process.returncode
                    self.fail(f"{slot.name} exited ({code}) while waiting for {what}")
            value = await check()
            if value is not None:
                return value
            if loop.time() >= deadline:
                self.fail(f"no {what} within {timeout_s}s")
            await asyncio.sleep(POLL_S)

    async def _healthy(self, slot: Replica) -> bool | None:
        try:
            async with self.http.get(
                slot.url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                return True if response.status == 200 else None
        except (aiohttp.ClientConnectionError, TimeoutError):
            return None

    async def command(
        self,
        index: int,
        text: str,
        channel: str,
        user: str = ALICE,
        command: str = "/task",
    ) -> str:
        """Runs a slash command through replica ``index``; returns the ephemeral reply's text."""
        body = slash_command(text, command, user, channel, next(self._requests))
        headers = {"Content-Type": "application/x-www-form-urlencoded"} | signed(
            body, secret=SIGNING_SECRET
        )
        slot = self.slots[index]
        async with self.http.post(slot.url + "/slack/events", data=body, headers=headers) as answer:
            if answer.status != 200:
                self.fail(
                    f"{command} {text} via {slot.name}: {answer.status} {await answer.text()}"
                )
            reply: dict[str, Any] = await answer.json()
        return str(reply["text"])


@asynccontextmanager
async def open_replicas(
    slack: SlackStandIn, database_url: str, directory: Path, settings: Mapping[str, str]
) -> AsyncIterator[Replicas]:
    """Replicas on ``database_url`` (none started yet); every one still running is killed at
    exit."""
    async with aiohttp.ClientSession() as http:
        replicas = Replicas(slack, database_url, directory, http, dict(settings))
        try:
            yield replicas
        finally:
            await replicas.close()


_CREATED = re.compile(r"Created \*(?P<ref>[A-Z0-9]+#\d+)\*")


def created_ref(reply: str) -> str:
    """The task ref in ``/task new``'s reply ("Created *C1#3*; ...")."""
    match = _CREATED.search(reply)
    assert match is not None, f"not a created-task reply: {reply!r}"
    return match["ref"]


# What is there before any replica starts ------------------------------------------------------


def core_settings(database_url: str, settings: Mapping[str, str]) -> Settings:
    """The settings a test's own core shares with the replicas: the lease policy."""
    return Settings(
        DATABASE_URL=database_url,
        THREADWORK_LEASE_TTL=float(settings.get("THREADWORK_LEASE_TTL", "600")),
        THREADWORK_MAX_DISPATCH_ATTEMPTS=int(settings.get("THREADWORK_MAX_DISPATCH_ATTEMPTS", "2")),
    )


@dataclass(frozen=True)
class Backlog:
    """Tasks to write into one channel, each assigned to the silent agent."""

    channel: str
    tasks: int
    #: The channel's own lease TTL (None: THREADWORK_LEASE_TTL's).
    lease_ttl_s: float | None = None


async def write_backlog(
    database_url: str, settings: Mapping[str, str], backlogs: Sequence[Backlog]
) -> list[list[str]]:
    """Migrates the database and writes assigned tasks through the core before any replica
    runs, so their cards and directives wait in the outbox; returns each backlog's task refs.
    The agent (``AGENT``) never answers."""
    written: list[list[str]] = []
    async with open_core(core_settings(database_url, settings)) as core:
        await migrate(core)
        await core.registry.add_agent(AGENT, slack_user_id=AGENT_USER)
        for backlog in backlogs:
            if backlog.lease_ttl_s is not None:
                await core.channel_policies.set_channel_policy(
                    backlog.channel, ALICE, lease_ttl_s=backlog.lease_ttl_s, max_attempts=None
                )
            refs = []
            for number in range(backlog.tasks):
                title = f"Task {number}"
                task = await core.board.create_task(backlog.channel, title, Actor.user(ALICE))
                await core.board.assign_task(task.ref, AGENT, ALICE)
                refs.append(str(task.ref))
            written.append(refs)
    return written


# What the database says ---------------------------------------------------------------------


@dataclass(frozen=True)
class HeldRow:
    """An outbox row in flight: who holds it, and what it will post."""

    id: int
    key: str
    kind: str
    task_id: int
    claimed_by: str


class Database:
    """Reads the shared database as the replicas left it (nothing here writes)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def _all(self, query: Any) -> list[Any]:
        async with self.engine.connect() as connection:
            return list(await connection.execute(query))

    async def in_flight(self) -> list[HeldRow]:
        """Every outbox row in flight, oldest first."""
        query = (
            select(outbox.c.id, outbox.c.key, outbox.c.kind, outbox.c.task_id, outbox.c.claimed_by)
            .where(outbox.c.state == OutboxState.IN_FLIGHT.value)
            .order_by(outbox.c.id)
        )
        return [HeldRow(*row) for row in await self._all(query)]

    async def open_rows(self, posts_only: bool = False) -> int:
        """How many outbox rows may still be sent (pending or in flight); with ``posts_only``,
        only those that post a message (not card updates)."""
        open_states = [OutboxState.PENDING.value, OutboxState.IN_FLIGHT.value]
        query = select(func.count()).select_from(outbox).where(outbox.c.state.in_(open_states))
        if posts_only:
            query = query.where(outbox.c.kind != OutboxKind.CARD_UPDATE.value)
        [(count,)] = await self._all(query)
        return int(count)

    async def coalesced_updates(self) -> int:
        """How many card updates were settled into a later claim of their card, never sent."""
        query = select(outbox.c.result).where(
            outbox.c.kind == OutboxKind.CARD_UPDATE.value,
            outbox.c.state == OutboxState.DELIVERED.value,
        )
        results = [result for (result,) in await self._all(query)]
        return sum(
            1 for result in results if isinstance(result, dict) and "coalesced_into" in result
        )

    async def held_wakeups(self) -> list[tuple[int, str]]:
        """(wake-up id, worker) of every agent wake-up held for a run."""
        query = select(agent_wakeups.c.id, agent_wakeups.c.claimed_by).where(text(HELD_WAKEUP_SQL))
        return [(int(i), str(by)) for i, by in await self._all(query)]

    async def workers(self) -> list[str]:
        """The registered workers' names."""
        return sorted(str(name) for (name,) in await self._all(select(workers.c.id)))

    async def worker_of(self, pid: int) -> str | None:
        """The registered worker of process ``pid`` (its name is host:pid:tag), if any."""
        found = [name for name in await self.workers() if f":{pid}:" in name]
        return found[0] if found else None

    async def statuses(self) -> dict[str, str]:
        """Each task's status, by ref (``C1#3``)."""
        query = select(tasks.c.channel_id, tasks.c.number, tasks.c.status)
        return {f"{c}#{n}": str(s) for c, n, s in await self._all(query)}

    async def events(self, kind: str) -> dict[str, int]:
        """How many events of ``kind`` each task has, by ref (tasks with none left out)."""
        query = (
            select(tasks.c.channel_id, tasks.c.number, func.count())
            .join(task_events, task_events.c.task_id == tasks.c.id)
            .where(task_events.c.kind == kind)
            .group_by(tasks.c.channel_id, tasks.c.number)
        )
        return {f"{c}#{n}": int(count) for c, n, count in await self._all(query)}


@asynccontextmanager
async def open_database(database_url: str) -> AsyncIterator[Database]:
    engine = create_engine(database_url)
    try:
        yield Database(engine)
    finally:
        await engine.dispose()


# What Slack received --------------------------------------------------------------------------


@dataclass(frozen=True)
class Post:
    """A message threadwork posted, as the stand-in received it."""

    #: ``event_type`` of its metadata: threadwork_card, threadwork_directive, ...
    kind: str
    task: str
    key: str
    channel: str
    attempt: int | None
    #: When the stand-in received it (seconds since the epoch: its ts is the wall clock's).
    at: float


CARD = "threadwork_card"
DIRECTIVE = "threadwork_directive"
ESCALATION = "threadwork_escalation"


def expected_posts(
    refs: Collection[str], directives: int, escalations: int
) -> Counter[tuple[str, str]]:
    """(kind, task) counts for tasks that each got a card, ``directives`` directives and
    ``escalations`` escalations."""
    kinds = ((CARD, 1), (DIRECTIVE, directives), (ESCALATION, escalations))
    return Counter({(kind, ref): n for ref in refs for kind, n in kinds if n})


def post_counts(received: Collection[Post]) -> Counter[tuple[str, str]]:
    return Counter((p.kind, p.task) for p in received)


async def settled(
    replicas: Replicas, database: Database, blocked: Collection[str], timeout_s: float
) -> list[Post]:
    """Waits until the ``blocked`` tasks are blocked and no post is left to send (card updates
    may be); returns what Slack received. Once nothing changes the tasks, nothing can post any
    more, so counts taken then are final."""

    async def done() -> list[Post] | None:
        statuses = await database.statuses()
        if any(statuses.get(ref) != "blocked" for ref in blocked):
            return None
        return None if await database.open_rows(posts_only=True) else posts(replicas.slack)

    return await replicas.wait_for(done, timeout_s, "every task settled and every post sent")


def posts(slack: SlackStandIn) -> list[Post]:
    """threadwork's messages at the stand-in, in the order received."""
    found = []
    for message in slack.posts():
        metadata = message.get("metadata") or {}
        payload = metadata.get("event_payload") or {}
        attempt = payload.get("attempt")
        found.append(
            Post(
                kind=str(metadata.get("event_type")),
                task=str(payload.get("task")),
                key=str(payload.get("outbox_key")),
                channel=str(message["channel"]),
                attempt=int(attempt) if attempt is not None else None,
                at=float(message["ts"]),
            )
        )
    return found


async def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics``, parsed: (sample name, sorted labels) -> value."""
    async with aiohttp.ClientSession() as http, http.get(base_url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    """A sample's value summed over its labels."""
    return sum(value for (sample, _), value in metrics.items() if sample == name)
