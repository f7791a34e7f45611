"""Benchmarks the Slack surface: signed events through POST /slack/events, and assign -> directive.

Run from the repository root (two to three minutes; everything stays on 127.0.0.1)::

    .venv/bin/python -m bench.slack_events

Two servers run side by side, each in its own spawned process: a bare Bolt AsyncApp (signing
secret, no-op ``message`` listener, default settings, served by aiohttp through Bolt's adapter)
and threadwork's own ``bot.root.serve`` (SQLite file, real clock, default outbox delivery
pacing, MCP at /mcp on the same port). This process generates the load and runs the Slack Web
API stand-in. The events are thread replies by a task's assignee, so on threadwork each is
verified, de-duplicated, stored, and renews the lease. Both servers are warmed up; the
closed-loop throughput run alternates between them in rounds, so that other load on the machine
falls on both alike; then each gets the open-loop steady rate alone.
Last, ``/task assign 1 coder`` is sent open-loop to one task per channel, at a sparse and at a
bursty rate, and timed until the directive's chat.postMessage reaches the stand-in. The results
go to ``bench/results/slack_events.md`` and stdout.
"""

import argparse
import asyncio
import dataclasses
import os
import shlex
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.machine import Machine
from bench.slack_load import (
    PHASE_TIMEOUT,
    EventSource,
    LoadResult,
    Sample,
    closed_loop,
    open_loop,
    percentile,
    post,
    slash_command,
    steady_events,
)
from bench.slack_report import DirectiveResult, Run, ServerResult, Workload, write
from bench.slack_servers import (
    TimedStandIn,
    child_server,
    cpu_seconds,
    free_port,
    run_bare_bolt,
    run_threadwork,
)
from bot.delivery import DeliverySettings
from bot.logging import configure_logging
from bot.root import open_core
from bot.task import TaskRef
from channels.slack.adapter_http import EVENTS_PATH
from tests.slack.conftest import ALICE, settings_for

EVENTS_CHANNEL = "CBENCH01"
RESULTS = Path(__file__).parent / "results" / "slack_events.md"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.slack_events",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--warmup", type=int, default=300, help="events before measuring")
    parser.add_argument("--events", type=int, default=3000, help="events in the throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the throughput run")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s in the steady run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the steady run")
    parser.add_argument("--assigns", type=int, default=60, help="assigns at each assign rate")
    parser.add_argument(
        "--assign-rates", default="4,20", help="assigns per second, comma-separated"
    )
    parser.add_argument("--write", type=Path, default=RESULTS, help="Markdown file to write")
    return parser.parse_args(argv)


def workload(args: argparse.Namespace) -> Workload:
    rates = tuple(float(rate) for rate in args.assign_rates.split(","))
    return Workload(
        args.warmup,
        args.events,
        args.rounds,
        args.concurrency,
        args.rate,
        args.seconds,
        args.assigns,
        rates,
    )


@dataclass(frozen=True)
class Target:
    """A server under test: where to post events, its process, and its stream of events."""

    name: str
    base: str
    pid: int
    source: EventSource
    #: How many thread messages the server has stored, for a server that stores them.
    stored: Callable[[], int] | None = None

    @property
    def url(self) -> str:
        return self.base + EVENTS_PATH


async def with_cpu(target: Target, run: Awaitable[LoadResult]) -> LoadResult:
    """``run``'s result, with the CPU time the target's process used meanwhile."""
    before = cpu_seconds(target.pid)
    result = await run
    return dataclasses.replace(result, cpu=cpu_seconds(target.pid) - before)


async def until_stored(target: Target, count: int, run: Awaitable[LoadResult]) -> LoadResult:
    """``run``'s result, its wall time running on until the target has stored the ``count``
    events it was sent (a server that stores nothing ends with the last answer)."""
    if target.stored is None:
        return await run
    before = target.stored()
    started = time.perf_counter()
    result = await run
    async with asyncio.timeout(PHASE_TIMEOUT):
        # Another process writes the rows: there is nothing to wait on but the database.
        while target.stored() < before + count:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    return dataclasses.replace(result, wall=time.perf_counter() - started)


async def measure_events(
    http: aiohttp.ClientSession, targets: list[Target], w: Workload
) -> list[ServerResult]:
    """Warm-up, throughput in alternating rounds, then each target alone at the steady rate."""
    for target in targets:
        warmup = closed_loop(http, target.url, target.source, w.warmup, w.concurrency)
        await until_stored(target, w.warmup, warmup)
    rounds: dict[str, list[LoadResult]] = {t.name: [] for t in targets}
    for _ in range(w.rounds):
        for target in targets:
            batch = closed_loop(http, target.url, target.source, w.per_round, w.concurrency)
            rounds[target.name].append(
                await with_cpu(target, until_stored(target, w.per_round, batch))
            )
    results = []
    for target in targets:
        throughput = LoadResult.combine(rounds[target.name])
        _say(f"{target.name}: {throughput.rate:.0f} events/s, {throughput.ok} ok")
        steady_run = steady_events(http, target.url, target.source, w.rate, w.seconds)
        steady = await with_cpu(target, until_stored(target, round(w.rate * w.seconds), steady_run))
        _say(f"{target.name}: ack p99 {percentile(steady.latencies, 99) * 1000:.1f} ms")
        results.append(ServerResult(target.name, throughput, steady))
    return results


async def command(http: aiohttp.ClientSession, base: str, text: str, channel: str) -> Sample:
    """Runs a ``/task`` command and fails loudly unless threadwork accepted it."""
    sample = await post(http, base + EVENTS_PATH, slash_command(text, channel))
    if sample.status != 200 or b":warning:" in sample.reply:
        raise RuntimeError(f"/task {text} in {channel}: {sample.status} {sample.reply!r}")
    return sample


async def prepare_thread(http: aiohttp.ClientSession, base: str, standin: TimedStandIn) -> str:
    """Creates a task and assigns it to ``coder``; returns its thread's ts once all is posted."""
    ref = f"{EVENTS_CHANNEL}#1"
    await command(http, base, "new Benchmark thread", EVENTS_CHANNEL)
    card = await standin.arrival("threadwork_card", ref)
    await command(http, base, "assign 1 coder", EVENTS_CHANNEL)
    await standin.arrival("threadwork_directive", ref)
    return card.ts


async def prepare_tasks(
    http: aiohttp.ClientSession, base: str, standin: TimedStandIn, channels: list[str]
) -> None:
    """Creates task 1 in each channel and waits for every card to be posted."""
    await _bounded(8, (command(http, base, "new Directive target", c) for c in channels))
    cards = (standin.arrival("threadwork_card", f"{c}#1", within=PHASE_TIMEOUT) for c in channels)
    await asyncio.gather(*cards)
    # A channel's next post is paced channel_interval after its card: start clear of that.
    await asyncio.sleep(DeliverySettings().channel_interval + 0.1)


async def measure_directives(
    http: aiohttp.ClientSession, base: str, standin: TimedStandIn, rate: float, channels: list[str]
) -> DirectiveResult:
    """``/task assign 1 coder`` open-loop, one channel each, timed until the directive lands."""

    async def assign(i: int) -> tuple[Sample, float]:
        sent = time.perf_counter()
        sample = await command(http, base, "assign 1 coder", channels[i])
        arrival = await standin.arrival("threadwork_directive", f"{channels[i]}#1", within=60)
        return sample, arrival.at - sent

    paced = await open_loop(len(channels), rate, assign)
    acks = LoadResult([sample for sample, _ in paced.results], paced.wall, paced.slips)
    latencies = [latency for _, latency in paced.results]
    _say(
        f"threadwork: assign -> directive p99 {percentile(latencies, 99) * 1000:.1f} ms at {rate:g}/s"
    )
    return DirectiveResult(rate, acks, latencies)


async def _bounded(limit: int, coroutines: Iterable[Coroutine[Any, Any, Any]]) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(coroutine: Coroutine[Any, Any, Any]) -> None:
        async with gate:
            await coroutine

    async with asyncio.timeout(PHASE_TIMEOUT):
        await asyncio.gather(*(one(c) for c in coroutines))


async def read_back(run: Run, database_url: str) -> None:
    """Counts the thread messages threadwork stored, and reads the lease's last renewal."""
    settings = settings_for(database_url, "http://127.0.0.1/")
    async with open_core(settings) as core, core.store.read() as reader:
        task = await reader.get_task(TaskRef(EVENTS_CHANNEL, 1))
        assert task is not None, "prepare_thread created it"
        run.stored = len(await reader.list_messages(task.id))
    run.renewed = task.last_progress_at


async def bench_both(
    run: Run, http: aiohttp.ClientSession, standin: TimedStandIn, workdir: Path
) -> None:
    """Starts both servers, measures events on both, then directives on threadwork."""
    bolt_port, tw_port = free_port(), free_port()
    bolt, tw = f"http://127.0.0.1:{bolt_port}", f"http://127.0.0.1:{tw_port}"
    database_url = f"sqlite:///{workdir / 'threadwork.db'}"
    bolt_args = (standin.url, bolt_port, str(workdir / "bolt.log"))
    tw_args = (database_url, standin.url, tw_port, str(workdir / "threadwork.log"))
    async with (
        child_server(run_bare_bolt, bolt_args, bolt + "/healthz", http) as bolt_process,
        child_server(run_threadwork, tw_args, tw + "/readyz", http) as tw_process,
    ):
        targets = [
            Target("bare Bolt", bolt, _pid(bolt_process.pid), _source("1700000000.000100")),
            Target(
                "threadwork",
                tw,
                _pid(tw_process.pid),
                _source(await prepare_thread(http, tw, standin)),
                stored=_message_counter(workdir / "threadwork.db"),
            ),
        ]
        run.bolt, run.threadwork = await measure_events(http, targets, run.workload)
        w = run.workload
        channels = [f"CDIR{i:05d}" for i in range(w.assigns * len(w.assign_rates))]
        await prepare_tasks(http, tw, standin, channels)
        for n, rate in enumerate(w.assign_rates):
            series = channels[n * w.assigns : (n + 1) * w.assigns]
            run.directives.append(await measure_directives(http, tw, standin, rate, series))
    await read_back(run, database_url)


def _message_counter(path: Path) -> Callable[[], int]:
    """Counts the thread messages in threadwork's database, read-only (WAL lets this reader
    run beside the server's writes without blocking them)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def count() -> int:
        return int(db.execute("SELECT count(*) FROM task_messages").fetchone()[0])

    return count


def _pid(pid: int | None) -> int:
    assert pid is not None, "the process has started"
    return pid


def _source(thread_ts: str) -> EventSource:
    return EventSource(EVENTS_CHANNEL, thread_ts)


def _say(line: str) -> None:
    print(line, flush=True)


async def bench(w: Workload, command_line: str) -> Run:
    """Runs everything against one stand-in and one client session; returns what it measured."""
    run = Run(command_line, Machine.read(), w)
    started = time.perf_counter()
    standin = TimedStandIn(users={ALICE: {"is_admin": False, "name": "alice"}})
    await standin.start()
    connector = aiohttp.TCPConnector(limit=max(256, w.concurrency))
    timeout = aiohttp.ClientTimeout(total=PHASE_TIMEOUT / 2)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            with tempfile.TemporaryDirectory(prefix="threadwork_bench_slack_") as workdir:
                try:
                    await bench_both(run, http, standin, Path(workdir))
                except BaseException:
                    _show_logs(Path(workdir))
                    raise
    finally:
        await standin.close()
    run.seconds = time.perf_counter() - started
    run.load_after = " ".join(f"{n:.2f}" for n in os.getloadavg())
    return run


def _show_logs(workdir: Path) -> None:
    """The servers' last log lines, so that a failed run says why."""
    for log in sorted(workdir.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-40:]
        print(f"--- last lines of {log.name} ---", *tail, sep="\n", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configure_logging("WARNING")
    command_line = shlex.join([".venv/bin/python", "-m", "bench.slack_events", *argv])
    text = write(args.write, asyncio.run(bench(workload(args), command_line)))
    print(f"\n{text}\nwrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
