"""Benchmarks one reconcile tick over 10k to 1M tasks, on SQLite and on PostgreSQL.

Run from the repository root::

    .venv/bin/python -m bench.reconcile --backend sqlite --backend postgres \\
        --sizes 10000,100000,1000000 --write docs/benchmarks.md

For each backend and size it migrates a scratch database and bulk-loads the board; then it
times ``Reconciler.reconcile_stale_tasks`` with a fixed clock, the sizes interleaved, over two
stale sets: ``--stale-percent`` of the tasks (1%), and a fixed ``--same-stale`` count (1,000)
so that ticks over different table sizes act on the same number of tasks. Scratch databases are named ``threadwork_bench_*``
and dropped afterwards unless ``--keep``.
"""

import argparse
import asyncio
import logging
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.backends import BACKENDS, Backend, analyze
from bench.history import load_history
from bench.machine import Machine
from bench.plans import Plan
from bench.population import PLACEMENTS, StaleRows, load_tasks
from bench.report import Report, write
from bench.tick import Measurement, TickResult

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__)
    parser.add_argument(
        "--backend", action="append", choices=BACKENDS, help="repeatable; default both"
    )
    parser.add_argument(
        "--sizes", default="10000,100000,1000000", help="task counts, comma-separated"
    )
    parser.add_argument("--stale-percent", type=float, default=1.0, help="stale share of the tasks")
    parser.add_argument(
        "--same-stale", type=int, default=1000, help="stale count used at every size"
    )
    parser.add_argument(
        "--placement", choices=PLACEMENTS, default="recent", help="where the stale tasks sit"
    )
    parser.add_argument("--history", type=int, default=1, help="events and outbox rows per task")
    parser.add_argument("--runs", type=int, default=5, help="timed ticks per measurement")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="server for scratch databases")
    parser.add_argument(
        "--workdir", type=Path, help="directory for SQLite files (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases")
    parser.add_argument("--write", type=Path, metavar="MARKDOWN", help="update this file's section")
    return parser.parse_args(argv)


def stale_counts(tasks: int, percent: float, same: int) -> list[int]:
    """The stale-set sizes to measure over ``tasks`` tasks, largest first."""
    counts = {round(tasks * percent / 100), same}
    return sorted((n for n in counts if 0 < n < tasks), reverse=True)


@dataclass
class BackendRun:
    """One backend's loading times (by size) and measurements."""

    load_seconds: dict[int, float] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)


async def bench_backend(backend: Backend, args: argparse.Namespace) -> BackendRun:
    """Loads every size into its own scratch database, then times their ticks interleaved.

    Taking run i of every size before run i+1 of any spreads the machine's other load evenly
    over the sizes, so that their ratio measures the reconcile rather than the neighbours.
    """
    run = BackendRun()
    async with AsyncExitStack() as stack:
        for tasks in (int(size) for size in args.sizes.split(",")):
            engine = await stack.enter_async_context(backend.scratch(f"reconcile_{tasks}"))
            run.load_seconds[tasks] = await _load(engine, tasks, args.history)
            loaded = run.load_seconds[tasks]
            print(f"{backend.name}: {tasks:,} tasks loaded in {loaded:.1f} s", flush=True)
            for count in stale_counts(tasks, args.stale_percent, args.same_stale):
                rows = StaleRows.place(tasks, count, args.placement)
                measurement = Measurement(engine, backend.name, tasks, rows)
                await measurement.prepare()
                run.measurements.append(measurement)
        for _ in range(args.runs):
            for measurement in run.measurements:
                await measurement.tick()
    for measurement in run.measurements:
        _print_result(measurement.result())
    return run


async def _load(engine: AsyncEngine, tasks: int, history: int) -> float:
    started = time.perf_counter()
    await load_tasks(engine, tasks)
    await load_history(engine, history)
    await analyze(engine)
    return time.perf_counter() - started


def _print_result(result: TickResult) -> None:
    runs = ", ".join(f"{s:.3f}" for s in result.seconds)
    print(
        f"  {result.stale.size:,} stale ({result.stale.redispatch:,} redispatched + "
        f"{result.stale.block:,} blocked): median {result.median:.3f} s, best {result.best:.3f} s "
        f"[{runs}], CPU {result.cpu_median:.3f} s, warm-up {result.warmup_seconds:.3f} s",
        flush=True,
    )
    for plan in result.plans:
        _print_plan(plan)


def _print_plan(plan: Plan) -> None:
    print(f"    {plan.title}: {plan.sql[:120]}...")
    for line in plan.lines[:12]:
        print(f"      {line}")


def revision() -> str:
    """The commit measured, flagged when bot/ or store/ has uncommitted changes."""

    def git(*words: str) -> str:
        done = subprocess.run(["git", *words], capture_output=True, text=True, check=False)  # noqa: S603, S607 - fixed arguments; git from PATH is the one the developer uses
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "bot", "store")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if dirty else "")


async def run(args: argparse.Namespace, command: str) -> Report:
    """Measures every requested backend and size; returns the report."""
    if args.workdir or args.keep:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="threadwork_bench_"))
        return await _run(args, command, workdir)
    with tempfile.TemporaryDirectory(prefix="threadwork_bench_") as temporary:
        return await _run(args, command, Path(temporary))


async def _run(args: argparse.Namespace, command: str, workdir: Path) -> Report:
    backends = [Backend(name, workdir, args.pg_url, args.keep) for name in args.backend or BACKENDS]
    report = Report(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        revision=revision(),
        machine=Machine.read(),
        versions={b.name: await b.version() for b in backends},
        runs=args.runs,
        stale_percent=args.stale_percent,
        placement=args.placement,
        same_stale=args.same_stale,
    )
    for backend in backends:
        run = await bench_backend(backend, args)
        report.results.extend(m.result() for m in run.measurements)
        report.load_seconds.update({(backend.name, n): s for n, s in run.load_seconds.items()})
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    report = asyncio.run(
        run(args, shlex.join([".venv/bin/python", "-m", "bench.reconcile", *argv]))
    )
    if args.write:
        write(args.write, report)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
