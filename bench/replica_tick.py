"""The reconcile tick on PostgreSQL: three replicas ticking at once, against one.

Run from the repository root::

    .venv/bin/python -m bench.replica_tick --tasks 100000 --stale 1000 --runs 5

One board is bulk-loaded (``bench.population``); before every tick its stale set is armed
again. Three set-ups are timed, interleaved run by run:

* ``1 replica``: one tick.
* ``3 replicas, lock``: as served. Three reconcilers from the composition root, each on its own
  engine (its own connections, as three processes would have), tick together; one takes the
  advisory lock and acts, the other two skip the tick.
* ``3 replicas, CAS only``: the same without the lock (``reconcile_lock=SoleReplica()``): all
  three detect, read the threads and race to act; the compare-and-set keeps it exactly once.

The thread probe is a stand-in that counts the threads it is asked to read (each one a
``conversations.replies`` call against the shared Slack budget) and answers "no progress" at
once, so the times are the database's and the reads are what the tick would spend. The three
replicas share this process's event loop, so their Python work is not parallel; the wall time
is from starting the ticks to the last one returning. Every run is checked: the stale set acted
on exactly once in total, none left stale.
"""

import argparse
import asyncio
import logging
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.backends import Backend, analyze, settle
from bench.history import load_history
from bench.machine import Machine
from bench.population import NOW, StaleRows, StaleSet, arm_stale, count_stale, load_tasks
from bench.reconcile import DEFAULT_PG_URL, revision
from bench.tick import SETTINGS, WrongTick
from bot.reconcile import FoundProgress, ReconcileReport, SoleReplica
from bot.root import Overrides, build_core
from bot.task import Task
from store.database import create_engine


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.replica_tick", description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks on the board")
    parser.add_argument("--stale", type=int, default=1000, help="stale tasks per tick")
    parser.add_argument("--runs", type=int, default=5, help="timed ticks per set-up")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="server for the scratch database")
    return parser.parse_args(argv)


class CountingProbe:
    """Stands in for Slack's thread probe: counts the threads it is asked to read."""

    def __init__(self) -> None:
        self.reads = 0

    async def find_progress(self, tasks: Sequence[Task]) -> FoundProgress:
        self.reads += len(tasks)
        return FoundProgress()


@dataclass(frozen=True)
class SetUp:
    name: str
    replicas: int
    locked: bool


SET_UPS = (
    SetUp("1 replica", 1, True),
    SetUp("3 replicas, lock", 3, True),
    SetUp("3 replicas, CAS only", 3, False),
)


@dataclass
class Results:
    """One set-up's timed ticks."""

    set_up: SetUp
    seconds: list[float] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)
    skipped_ticks: list[int] = field(default_factory=list)
    #: Tasks a replica detected but another acted on first (compare-and-set misses).
    lost_races: list[int] = field(default_factory=list)

    def line(self) -> str:
        runs = ", ".join(f"{s:.3f}" for s in self.seconds)
        return (
            f"{self.set_up.name}: median {statistics.median(self.seconds):.3f} s, "
            f"best {min(self.seconds):.3f} s [{runs}]; thread reads per tick "
            f"{statistics.median(self.reads):,.0f}; ticks skipped (lock held elsewhere) "
            f"{statistics.median(self.skipped_ticks):.0f}; races lost to the compare-and-set "
            f"{statistics.median(self.lost_races):,.0f}"
        )


async def timed_ticks(
    engines: list[AsyncEngine], set_up: SetUp, rows: StaleRows, results: Results
) -> None:
    """Arms the stale set, then times ``set_up``'s replicas ticking together."""
    stale = await arm_stale(engines[0], rows)
    await settle(engines[0])
    probes = [CountingProbe() for _ in range(set_up.replicas)]
    lock = None if set_up.locked else SoleReplica()
    reconcilers = [
        build_core(
            SETTINGS, engine, Overrides(clock=lambda: NOW, probe=probe, reconcile_lock=lock)
        ).reconciler
        for engine, probe in zip(engines, probes, strict=False)
    ]
    started = time.perf_counter()
    reports = await asyncio.gather(*(r.reconcile_stale_tasks() for r in reconcilers))
    results.seconds.append(time.perf_counter() - started)
    await _check(engines[0], stale, reports)
    results.reads.append(sum(p.reads for p in probes))
    results.skipped_ticks.append(sum(r.held_elsewhere for r in reports))
    results.lost_races.append(sum(r.skipped for r in reports))


async def _check(engine: AsyncEngine, stale: StaleSet, reports: list[ReconcileReport]) -> None:
    acted = StaleSet(
        redispatch=sum(len(r.redispatched) for r in reports),
        block=sum(len(r.blocked) for r in reports),
    )
    if stale.size == 0 or acted != stale:
        raise WrongTick(f"armed {stale}, but the replicas together did {acted}")
    async with engine.connect() as connection:
        left = await count_stale(connection)
    if left.size:
        raise WrongTick(f"{left.size} tasks are still stale after the tick")


async def run(args: argparse.Namespace) -> list[Results]:
    backend = Backend("postgres", Path(tempfile.gettempdir()), args.pg_url)
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(backend.scratch("replica_tick"))
        await load_tasks(engine, args.tasks)
        await load_history(engine, 1)
        await analyze(engine)
        url = engine.url.render_as_string(hide_password=False)
        engines = [engine]
        for _ in range(max(s.replicas for s in SET_UPS) - 1):
            other = create_engine(url)
            stack.push_async_callback(other.dispose)
            engines.append(other)
        rows = StaleRows.place(args.tasks, args.stale, "recent")
        results = [Results(set_up) for set_up in SET_UPS]
        for result in results:  # untimed warm-up: every engine connected, statements compiled
            await timed_ticks(
                engines[: result.set_up.replicas], result.set_up, rows, Results(result.set_up)
            )
        for _ in range(args.runs):
            for result in results:
                await timed_ticks(engines[: result.set_up.replicas], result.set_up, rows, result)
        return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    command = shlex.join([".venv/bin/python", "-m", "bench.replica_tick", *argv])
    machine = Machine.read()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = asyncio.run(run(args))
    print(f"{started}, {command}, revision {revision()}")
    print(
        f"machine: {machine.nproc} CPU ({machine.cpu}), {machine.ram_gib:.1f} GiB, load "
        f"{machine.load_average}, {machine.os}, Python {machine.python}, {machine.libraries}"
    )
    print(f"{args.tasks:,} tasks, {args.stale:,} stale per tick")
    for result in results:
        print(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
