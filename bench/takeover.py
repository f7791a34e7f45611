"""Takeover time after kill -9: ``python -m bench.takeover``.

Each run writes a backlog into a fresh SQLite file (``--channels`` channels of
``--tasks-per-channel`` assigned tasks: a card and a directive each, on 600 s leases so nothing
lapses), starts ``threadwork serve`` against the Slack Web API stand-in, whose every answer
comes ``--delay`` seconds after the call took effect, and kills it with SIGKILL as soon as a
post reached Slack in every channel (those answers never come back). It reads from the database
the outbox rows the dead worker held, starts ``serve`` again at once, and times, on the wall
clock the stand-in stamps messages with: the restart (spawn) to /healthz, and the restart to
the last held row reaching the stand-in. The issue's bound is THREADWORK_WORKER_TIMEOUT + 5 s.

Prints a Markdown section: the machine, the command, a row per run and the medians. Processes,
stand-in and database all stay on this machine; ``tests/processes.py`` runs the processes.
"""

import argparse
import asyncio
import logging
import shlex
import statistics
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from bench.machine import Machine
from bench.reconcile import revision
from tests.processes import (
    Backlog,
    open_database,
    open_replicas,
    posts,
    write_backlog,
)
from tests.slack.standin import SlackStandIn

#: A held row still not at Slack this long after the restart fails the run.
GIVE_UP_S = 120.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.takeover", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="kill and restart this many times")
    parser.add_argument("--channels", type=int, default=4, help="channels with a backlog")
    parser.add_argument("--tasks-per-channel", type=int, default=3, help="tasks per channel")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds each Slack answer waits")
    parser.add_argument(
        "--worker-timeout", type=float, default=3.0, help="THREADWORK_WORKER_TIMEOUT, seconds"
    )
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Run:
    """One kill and restart."""

    #: Outbox rows in flight for the dead worker right after the kill, and how many of them
    #: had reached Slack already (their answers lost with the process).
    held: int
    landed: int
    held_updates: int
    #: Seconds: restart to /healthz, restart to the last held post at Slack.
    restart_to_ready: float
    restart_to_last: float

    @property
    def ready_to_last(self) -> float:
        return self.restart_to_last - self.restart_to_ready


async def one_run(directory: Path, args: argparse.Namespace) -> Run:
    """Writes the backlog, runs serve, kills it during delivery, restarts it, and times it."""
    database_url = f"sqlite:///{directory / 'takeover.db'}"
    settings = {"THREADWORK_WORKER_TIMEOUT": str(args.worker_timeout)}
    backlogs = [Backlog(f"C{n}", args.tasks_per_channel) for n in range(1, args.channels + 1)]
    await write_backlog(database_url, settings | {"THREADWORK_LEASE_TTL": "600"}, backlogs)
    slack = SlackStandIn(delay=args.delay)
    await slack.start()
    try:
        async with (
            open_database(database_url) as database,
            open_replicas(slack, database_url, directory, settings) as replicas,
        ):
            worker = await database.worker_of((await replicas.start(0)).pid)
            await replicas.wait_for(
                lambda: _posted_in(slack, args.channels), 60, "a post in every channel"
            )
            await replicas.kill(0)
            held = [row for row in await database.in_flight() if row.claimed_by == worker]
            landed = {p.key for p in posts(slack)}
            restarted = await replicas.start(0)
            keys = {row.key for row in held if row.kind != "card_update"}
            last = await replicas.wait_for(
                lambda: _last_at(slack, keys), GIVE_UP_S, "every held post at Slack"
            )
    finally:
        await slack.close()
    return Run(
        held=len(held),
        landed=len(keys & landed),
        held_updates=len(held) - len(keys),
        restart_to_ready=restarted.ready_at - restarted.spawned_at,
        restart_to_last=last - restarted.spawned_at,
    )


async def _posted_in(slack: SlackStandIn, channels: int) -> bool | None:
    return True if len({m["channel"] for m in slack.posts()}) >= channels else None


async def _last_at(slack: SlackStandIn, keys: set[str]) -> float | None:
    """When the last of ``keys`` reached Slack, once all have."""
    at = {p.key: p.at for p in posts(slack)}
    return max(at[key] for key in keys) if keys <= at.keys() else None


async def measure(args: argparse.Namespace) -> list[Run]:
    runs = []
    for number in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="threadwork_takeover_") as temporary:
            runs.append(await one_run(Path(temporary), args))
        print(f"run {number + 1}/{args.runs} done", file=sys.stderr)
    return runs


def render(runs: list[Run], args: argparse.Namespace, command: str, machine: Machine) -> str:
    bound = args.worker_timeout + 5
    lines = [
        "## Takeover after kill -9",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {revision()}, on "
        f"{machine.cpu} (nproc {machine.nproc}), {machine.ram_gib:.1f} GiB RAM, {machine.os}, "
        f"Python {machine.python}; load average at start {machine.load_average}.",
        "",
        f"```sh\n{command}\n```",
        "",
        f"{args.channels} channels x {args.tasks_per_channel} tasks, Slack answers after "
        f"{args.delay:g} s, THREADWORK_WORKER_TIMEOUT={args.worker_timeout:g} s (bound "
        f"{bound:g} s from the restart). Times in seconds; the restart is the new process's "
        "spawn, right after the kill.",
        "",
        "| run | rows held | of them already at Slack | card updates held | restart -> /healthz "
        "| /healthz -> last held post | restart -> last held post | within bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for number, run in enumerate(runs, 1):
        lines.append(
            f"| {number} | {run.held} | {run.landed} | {run.held_updates} "
            f"| {run.restart_to_ready:.2f} | {run.ready_to_last:.2f} | {run.restart_to_last:.2f} "
            f"| {'yes' if run.restart_to_last <= bound else 'no'} |"
        )
    lines.append(
        f"| median | | | | {statistics.median(r.restart_to_ready for r in runs):.2f} "
        f"| {statistics.median(r.ready_to_last for r in runs):.2f} "
        f"| {statistics.median(r.restart_to_last for r in runs):.2f} | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    machine = Machine.read()
    runs = asyncio.run(measure(args))
    print(
        render(runs, args, shlex.join([".venv/bin/python", "-m", "bench.takeover", *argv]), machine)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
