"""Replica wake-up latency on PostgreSQL: a commit on replica A wakes replica B through NOTIFY.

Run from the repository root::

    .venv/bin/python -m bench.replica_wake --trials 20

Replica B is ``bot.root.open_service`` in a process of its own (``--replica``), polling only
every 30 s, so nothing but A's NOTIFY, heard on B's listening connection, can wake it within a
trial. Replica A is a core in this process (``open_core``) committing through the board; the MCP
client and the Anthropic stand-in are here too, so every instant is this process's
``time.monotonic()``.

Two series, each ``--trials`` assigns, one at a time:

* ``wait_for_work``: an external agent's ``wait_for_work`` is in flight on B (issued
  ``--park-ms`` before the commit, so it has looked once and is waiting); from ``assign_task``
  returning on A (it has committed) to the call's answer reaching the client.
* ``runner``: B's runner is idle; from ``assign_task`` returning on A to the stand-in receiving
  the run's first model request (so the run started, built its prompt and called the model).

Each series starts with ``--warmup`` untimed assigns (connections opened, statements compiled).
Percentiles are nearest-rank: with 20 trials the p99 is the slowest trial.
"""

import argparse
import asyncio
import json
import logging
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import structlog
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy import select

from bench.agents_turns import Worker, task_ref
from bench.backends import Backend
from bench.machine import Machine
from bench.reconcile import DEFAULT_PG_URL, revision
from bot.agents import AgentKind, AgentSettings
from bot.delivery import DeliverySettings
from bot.root import Core, Overrides, open_core, open_service
from bot.settings import Settings
from bot.status import TaskStatus
from bot.task import Actor, Task
from store.schema import tasks
from tests.agents.standins import AnthropicStandIn, Reply

#: Replica B's poll (runner, wait_for_work, outbox delivery): longer than any trial.
B_POLL_S = 30.0
TRIAL_TIMEOUT_S = 20.0
START_TIMEOUT_S = 60.0
EXTERNAL = "cursor-bench"
BUILT_IN = "claude-bench"
PERSON = "UBENCH01"
TARGET_P99_S = 0.200


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.replica_wake", description=__doc__)
    parser.add_argument("--trials", type=int, default=20, help="timed assigns per series")
    parser.add_argument("--warmup", type=int, default=1, help="untimed assigns before each series")
    parser.add_argument(
        "--park-ms", type=float, default=250.0, help="how long B waits before each commit"
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="server for the scratch database")
    parser.add_argument(
        "--replica", nargs=2, metavar=("DATABASE_URL", "ANTHROPIC_URL"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def replica_settings(database_url: str, anthropic_url: str) -> Settings:
    return Settings(
        DATABASE_URL=database_url,
        ANTHROPIC_API_KEY="sk-ant-bench-000",
        ANTHROPIC_BASE_URL=anthropic_url,
        SLACK_BOT_TOKEN=None,
        THREADWORK_AGENT_CALLS_PER_MINUTE=10_000,
    )


async def serve_replica(database_url: str, anthropic_url: str) -> None:
    """Child process: replica B, until stdin closes. Prints its MCP URL once it serves."""
    overrides = Overrides(
        port=0,
        worker="bench-replica-b",
        poll_s=B_POLL_S,
        delivery=DeliverySettings(idle_poll=B_POLL_S),
    )
    async with open_service(replica_settings(database_url, anthropic_url), overrides) as service:
        assert service.listener is not None, "replica B must be on PostgreSQL"
        print(json.dumps({"mcp_url": service.mcp_url}), flush=True)
        await asyncio.to_thread(sys.stdin.read)


@asynccontextmanager
async def replica_process(database_url: str, anthropic_url: str) -> AsyncIterator[str]:
    """Starts replica B's process; yields its MCP URL; stops it by closing its stdin."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.replica_wake",
        "--replica",
        database_url,
        anthropic_url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"replica B exited (code {process.returncode})")
        yield str(json.loads(line)["mcp_url"])
    finally:
        process.stdin.close()
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


class Arrivals:
    """The stand-in's responder: answers like ``Worker(0)`` (in_review at once) and notes when
    each task's first request arrived."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self._worker = Worker(0)
        self._more = asyncio.Event()

    def __call__(self, body: dict[str, Any]) -> Reply:
        self.first.setdefault(task_ref(body), time.monotonic())
        self._more.set()
        return self._worker(body)

    async def until(self, ref: str) -> float:
        while ref not in self.first:
            self._more.clear()
            await self._more.wait()
        return self.first[ref]


@dataclass(frozen=True)
class Series:
    name: str
    seconds: list[float]

    def percentile(self, p: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    def line(self) -> str:
        ms = [f"{s * 1000:.1f}" for s in self.seconds]
        verdict = "pass" if self.percentile(99) < TARGET_P99_S else "FAIL"
        return (
            f"{self.name}: p50 {self.percentile(50) * 1000:.1f} ms, "
            f"p90 {self.percentile(90) * 1000:.1f} ms, p99 {self.percentile(99) * 1000:.1f} ms "
            f"(target < {TARGET_P99_S * 1000:.0f} ms: {verdict}), "
            f"mean {statistics.mean(self.seconds) * 1000:.1f} ms; trials [{', '.join(ms)}]"
        )


async def wait_for_work_series(
    a: Core, mcp_url: str, trials: int, warmup: int, park_s: float
) -> Series:
    token = await a.registry.issue_token(EXTERNAL)
    seconds = []
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(mcp_url, http_client=http)) as client,
    ):
        await client.list_tools()
        for n in range(warmup + trials):
            task = await a.board.create_task("C1", f"MCP wake {n}", Actor.user(PERSON))
            waiting = asyncio.create_task(client.call_tool("wait_for_work", {"timeout_s": 25}))
            await asyncio.sleep(park_s)  # the agent is parked on B before A commits
            assigned = await a.board.assign_task(task.ref, EXTERNAL, PERSON)
            committed = time.monotonic()
            async with asyncio.timeout(TRIAL_TIMEOUT_S):
                result = await waiting
            seconds.append(time.monotonic() - committed)
            _check_work(result.structured_content, assigned)
    return Series("commit on A -> wait_for_work answers on B", seconds[warmup:])


def _check_work(answer: dict[str, Any] | None, task: Task) -> None:
    work = (answer or {}).get("work", [])
    if [w["task"] for w in work] != [str(task.ref)]:
        raise AssertionError(f"wait_for_work answered {answer}, not {task.ref}")


async def runner_series(
    a: Core, arrivals: Arrivals, trials: int, warmup: int, park_s: float
) -> Series:
    seconds = []
    for n in range(warmup + trials):
        task = await a.board.create_task("C1", f"Runner wake {n}", Actor.user(PERSON))
        await asyncio.sleep(park_s)  # B's runner is idle (its last run has ended)
        await a.board.assign_task(task.ref, BUILT_IN, PERSON)
        committed = time.monotonic()
        async with asyncio.timeout(TRIAL_TIMEOUT_S):
            arrived = await arrivals.until(str(task.ref))
            await _until_in_review(a, task)
        seconds.append(arrived - committed)
    name = "commit on A -> B's runner starts the run (first model request)"
    return Series(name, seconds[warmup:])


async def _until_in_review(a: Core, task: Task) -> None:
    """Waits for the run to end (bound it): the task reaches in_review."""
    while True:
        async with a.engine.connect() as connection:
            query = select(tasks.c.status).where(tasks.c.id == task.id)
            if (await connection.execute(query)).scalar_one() == TaskStatus.IN_REVIEW.value:
                return
        await asyncio.sleep(0.02)  # polled only between trials, never inside a timed span


async def run(args: argparse.Namespace) -> list[Series]:
    arrivals = Arrivals()
    standin = AnthropicStandIn(arrivals)
    await standin.start()
    backend = Backend("postgres", Path(tempfile.gettempdir()), args.pg_url)
    try:
        async with backend.scratch("replica_wake") as engine:
            url = engine.url.render_as_string(hide_password=False)
            overrides = Overrides(worker="bench-replica-a")
            async with (
                open_core(replica_settings(url, standin.url), overrides) as a,
                replica_process(url, standin.url) as mcp_url,
            ):
                await a.registry.add_agent(EXTERNAL)
                built_in = AgentSettings(model="claude-standin-1", max_tokens=1024)
                await a.registry.add_agent(BUILT_IN, AgentKind.CLAUDE, settings=built_in)
                park_s = args.park_ms / 1000
                return [
                    await wait_for_work_series(a, mcp_url, args.trials, args.warmup, park_s),
                    await runner_series(a, arrivals, args.trials, args.warmup, park_s),
                ]
    finally:
        await standin.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    if args.replica:
        asyncio.run(serve_replica(*args.replica))
        return 0
    command = shlex.join([".venv/bin/python", "-m", "bench.replica_wake", *argv])
    machine = Machine.read()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = asyncio.run(run(args))
    print(f"{started}, {command}, revision {revision()}")
    print(
        f"machine: {machine.nproc} CPU ({machine.cpu}), {machine.ram_gib:.1f} GiB, load "
        f"{machine.load_average}, {machine.os}, Python {machine.python}, {machine.libraries}"
    )
    for series in results:
        print(series.line())
    return 0 if all(s.percentile(99) < TARGET_P99_S for s in results) else 1


if __name__ == "__main__":
    sys.exit(main())
