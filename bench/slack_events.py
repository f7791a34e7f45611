"""Benchmarks the Slack surface: signed events through POST /slack/events, and assign -> directive.

Run from the repository root (about two minutes; everything stays on 127.0.0.1)::

    .venv/bin/python -m bench.slack_events

Two servers run side by side, each in its own spawned process: a bare Bolt AsyncApp (signing
secret, no-op ``message`` listener, default settings, served by aiohttp through Bolt's adapter)
and threadwork's own ``bot.root.serve`` (SQLite file, real clock, default outbox delivery
pacing, MCP at /mcp on the same port). This process generates the load and runs the Slack Web
API stand-in. The events are signed thread replies by a task's assignee, each with a new event
id and ts, so on threadwork each is verified, stored, and renews the lease.

Both servers are warmed up. Then the sustained run: closed-loop over 16 keep-alive connections
for some seconds per round, the rounds alternating between the servers so that other load on
the machine falls on both alike. It measures each server's acknowledgements per second and ack
latency under that load and, for threadwork, posts *stored* per second: from the first send
until the last post is in the database. Then each server gets the open-loop steady rate alone.
Last, ``/task assign 1 coder`` is sent open-loop to one task per channel, at a sparse and at a
bursty rate, and timed until the directive's chat.postMessage reaches the stand-in. The results
go to ``bench/results/slack_events.md`` and stdout.
"""

import argparse
import asyncio
import dataclasses
import shlex
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.machine import Machine, load_average
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
    sustained,
)
from bench.slack_report import DirectiveResult, Run, ServerResult, Sustained, Workload, write
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
T = TypeVar("T")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.slack_events",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--warmup", type=int, default=300, help="events before measuring")
    parser.add_argument(
        "--sustain", type=float, default=5.0, help="seconds per round of the sustained run"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the sustained run")
    parser.add_argument(
        "--connections", type=int, default=16, help="connections (senders) in the sustained run"
    )
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
        args.sustain,
        args.rounds,
        args.connections,
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


async def with_cpu(target: Target, run: Awaitable[T]) -> tuple[T, float]:
    """``run``'s result, and the CPU time the target's process used meanwhile."""
    before = cpu_seconds(target.pid)
    result = await run
    return result, cpu_seconds(target.pid) - before


async def until_stored(target: Target, run: Awaitable[LoadResult]) -> Sustained:
    """``run``'s result, and the wall time from its start until the target has stored every
    event it answered 200 (None for a server that stores nothing)."""
    if target.stored is None:
        return Sustained(await run)
    before = target.stored()
    started = time.perf_counter()
    result = await run
    async with asyncio.timeout(PHASE_TIMEOUT):
        # Another process writes the rows: there is nothing to wait on but the database.
        while target.stored() < before + result.ok:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    return Sustained(result, time.perf_counter() - started)


async def measure_events(
    http: aiohttp.ClientSession, targets: list[Target], w: Workload
) -> list[ServerResult]:
    """Warm-up, the sustained run in alternating rounds, then each target alone at the steady
    rate."""
    for target in targets:
        await until_stored(
            target, closed_loop(http, target.url, target.source, w.warmup, w.connections)
        )
    rounds: dict[str, list[Sustained]] = {t.name: [] for t in targets}
    for _ in range(w.rounds):
        for target in targets:
            load = sustained(target.url, target.source, w.sustain, w.connections)
            result, cpu = await with_cpu(target, until_stored(target, load))
            rounds[target.name].append(result.with_cpu(cpu))
    results = []
    for target in targets:
        loaded = Sustained.combine(rounds[target.name])
        _say(f"{target.name}: {loaded.summary()}")
        steady_run = steady_events(http, target.url, target.source, w.rate, w.seconds)
        steady, cpu = await with_cpu(target, until_stored(target, steady_run))
        steady_acks = dataclasses.replace(steady.acks, cpu=cpu)
        _say(f"{target.name}: ack p99 {percentile(steady_acks.latencies, 99) * 1000:.1f} ms")
        results.append(ServerResult(target.name, loaded, steady_acks))
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
    # A channel's posting budget refills after its card: start clear of that.
    posts = DeliverySettings().channel_posts
    await asyncio.sleep((60 / posts.per_minute if posts else 0) + 0.1)


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
    connector = aiohttp.TCPConnector(limit=max(256, w.connections))
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
    run.load_after = load_average()
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
