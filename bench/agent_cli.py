"""The worker (``threadwork worker``): how soon a dispatched task's command starts, and how soon a
stopped task's command is gone, process group and all.

Run from the repository root (about two minutes; everything stays on 127.0.0.1)::

    .venv/bin/python -m bench.agent_cli [--trials 20] [--write docs/benchmarks.md]

The service is a real ``threadwork serve`` process on SQLite with the Slack stand-in, and the
worker a real ``threadwork worker`` process with its defaults (concurrency 1, the tasks of
running commands read every 2 s), both started by ``tests.agent_cli.rig``. The command is a
shell that writes when it started and its process group, then sleeps
(``exec sleep 600``): what is measured is the worker, not a CLI's start-up.

Each trial is one task, created and assigned by signed ``/task`` commands while the worker
waits for work, once its last attempt ended (and ``--gap`` seconds more, plus a random 0-2 s so
that the cancels fall at every phase of the worker's 2 s read of its tasks):

- directive committed -> command started: from the ``dispatched`` event's time (the service's
  clock, read in the transaction that commits the directive) to the time the command wrote
  (``date +%s.%N``): both this machine's wall clock.
- stop -> process group gone: half the trials are canceled (``/task cancel N``: the worker
  finds out at its next read of its tasks), half stopped (the card's Stop: a ``stop`` item
  answers the worker's ``wait_for_work`` at once); from sending the request to the moment no
  process of the command's group is left (``kill(-pgid, 0)`` polled every 5 ms).

Percentiles are nearest-rank: with 20 trials of a kind the p99 is the slowest.
"""

import argparse
import asyncio
import math
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import Machine, load_average
from bench.sections import write_section
from bot.logging import configure_logging
from bot.task import EventKind, TaskRef
from channels.agent_cli.process import group_alive
from channels.agent_cli.worker import CHECK_EVERY_S
from tests.agent_cli.rig import Rig, WorkerProcess, open_rig

TITLE = "## The worker: dispatch -> command, stop -> process group gone (issue 12)"
START = "<!-- bench.agent_cli:start -->"
END = "<!-- bench.agent_cli:end -->"
AGENT, CHANNEL = "coder-bench", "CBENCH"
#: The command: says when it started and its process group, then sleeps until stopped.
COMMAND = [
    "sh",
    "-c",
    'read -r _ _ _ _ pgid _ < /proc/$$/stat; echo "$THREADWORK_TASK $(date +%s.%N) $pgid" '
    '>> "$FAKE_CLI_RECORDS/starts"; exec sleep 600',
]
#: The issue's bound on stop -> process group gone.
GONE_TARGET_S = 5.0
WAIT_S = 30.0


@dataclass(frozen=True)
class Trial:
    ref: str
    how: str
    started_s: float
    gone_s: float


@dataclass
class Run:
    command_line: str
    machine: Machine
    args: argparse.Namespace
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    load_after: str = ""


async def started_at(rig: Rig, worker: WorkerProcess, ref: str) -> tuple[float, int]:
    """When the command of ``ref`` wrote its line, and its process group."""
    starts = worker.records / "starts"

    async def written() -> tuple[float, int] | None:
        lines = starts.read_text().splitlines() if starts.exists() else []
        found = [line.split() for line in lines if line.startswith(f"{ref} ")]
        return (float(found[0][1]), int(found[0][2])) if found else None

    return await rig.wait_for(written, WAIT_S, f"{ref}'s command started")


async def gone_at(rig: Rig, pgid: int) -> float:
    async def gone() -> float | None:
        return None if group_alive(pgid) else time.time()

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if (at := await gone()) is not None:
            return at
        await asyncio.sleep(0.005)  # the kernel tears the group down: nothing to await
    return rig.replicas.fail(f"group {pgid} still alive after {WAIT_S}s")


async def ended(rig: Rig, worker: WorkerProcess, attempts: int) -> None:
    async def logged() -> bool | None:
        return True if worker.output().count("worker.attempt_ended") >= attempts else None

    await rig.wait_for(logged, WAIT_S, f"{attempts} attempts ended")


async def trial(rig: Rig, worker: WorkerProcess, n: int, how: str) -> Trial:
    ref = await rig.assigned(CHANNEL, AGENT, f"Trial {n}")
    started, pgid = await started_at(rig, worker, ref)
    dispatched = [e for e in (await rig.detail(ref)).events if e.kind == EventKind.DISPATCHED]
    sent = time.time()
    if how == "cancel":
        await rig.command(f"cancel {TaskRef.parse(ref).number}", CHANNEL)
    else:
        await rig.press("task_stop", ref)
    gone = await gone_at(rig, pgid)
    return Trial(ref, how, started - dispatched[0].at.timestamp(), gone - sent)


async def bench(run: Run) -> None:
    args = run.args
    with tempfile.TemporaryDirectory(prefix="threadwork_bench_worker_") as directory:
        async with open_rig(Path(directory), [AGENT], [CHANNEL]) as rig:
            worker = await rig.worker(AGENT, COMMAND)
            for n in range(args.warmup + 2 * args.trials):
                how = "cancel" if n % 2 == 0 else "stop"
                done = await trial(rig, worker, n + 1, how)
                await ended(rig, worker, n + 1)
                say(f"{done.ref} {how}: started {ms(done.started_s)}, gone {ms(done.gone_s)}")
                if n >= args.warmup:
                    run.trials.append(done)
                # The worker back to waiting for work; the jitter spreads the cancels over the
                # phases of its 2 s read of its tasks, which regular trials would lock onto.
                await asyncio.sleep(args.gap + random.uniform(0, CHECK_EVERY_S))


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def spread(values: Sequence[float]) -> str:
    """p50 / p99 / max."""
    return " / ".join(ms(v) for v in (percentile(values, 50), percentile(values, 99), max(values)))


def machine_line(run: Run) -> str:
    return run.machine.line(run.load_after)


def section(run: Run) -> str:
    started = [t.started_s for t in run.trials]
    cancels = [t.gone_s for t in run.trials if t.how == "cancel"]
    stops = [t.gone_s for t in run.trials if t.how == "stop"]
    gone_met = percentile(cancels + stops, 99) < GONE_TARGET_S
    lines = [
        f"Measured {run.date} on {machine_line(run)} Whole run {run.seconds:.0f} s.",
        "",
        "| measurement | command | target | result |",
        "|---|---|---|---|",
        f"| directive committed -> command started, p50 / p99 / max over {len(started)} "
        f"trials | `{run.command_line}` | | {spread(started)} |",
        f"| cancel -> process group gone, over {len(cancels)} (found by the worker's read of "
        f"its tasks every 2 s) | same | p99 < {GONE_TARGET_S:g} s "
        f"| {'met' if gone_met else '**missed**'}: {spread(cancels)} |",
        f"| Stop -> process group gone, over {len(stops)} (a `stop` item from "
        f"`wait_for_work`) | same | p99 < {GONE_TARGET_S:g} s "
        f"| {'met' if gone_met else '**missed**'}: {spread(stops)} |",
    ]
    return "\n".join([START, "", *lines, "", END])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.agent_cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--trials", type=int, default=20, help="timed trials of each kind")
    parser.add_argument("--warmup", type=int, default=2, help="untimed trials before them")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between trials")
    parser.add_argument("--write", type=Path, help="write the section into this file")
    return parser.parse_args(argv)


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configure_logging("WARNING")
    command_line = shlex.join([".venv/bin/python", "-m", "bench.agent_cli", *argv])
    run = Run(command_line, Machine.read(), args)
    began = time.perf_counter()
    asyncio.run(bench(run))
    run.seconds = time.perf_counter() - began
    run.load_after = load_average()
    text = section(run)
    if args.write is not None:
        write_section(args.write, TITLE, START, END, text)
    print(f"\n{text}")
    gone = [t.gone_s for t in run.trials]
    return 0 if percentile(gone, 99) < GONE_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
