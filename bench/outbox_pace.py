"""Benchmarks outbox delivery at Slack's pace: a burst of assigns spread over channels, and a
backlog in one channel draining at Slack's posting limit.

Run from the repository root (about a minute; everything stays on 127.0.0.1)::

    .venv/bin/python -m bench.outbox_pace

threadwork's own ``bot.root.serve`` runs in a spawned process (SQLite file in WAL mode, real
clock, default DeliverySettings: a channel's posts at 60 a minute with a burst of 3, the
workspace's card updates at 50 a minute with a burst of 10). This process sends the signed
slash commands and runs the Slack Web API stand-in, which notes when each post arrives.

1. assign -> directive: each channel gets ``ceil(assigns / channels)`` tasks, whose cards are
   posted and whose channel budgets are let refill; then ``/task assign N coder`` goes
   open-loop at each rate, assign i to channel ``i mod channels`` (so at 20/s over 20 channels
   each channel gets one assign a second, Slack's posting rate), timed from the send until the
   stand-in receives the directive. Every assign also queues a card update, which waits for
   the workspace's budget, in its own lane.
2. Backlog: ``--backlog`` cards are created back to back in one channel, then timed as they
   reach the stand-in. The drain rate after the burst must keep up with Slack's limit (at least
   0.9 posts a second), and no stretch of posts may go faster than the limit allows.
"""

import argparse
import asyncio
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.gc_pauses import Pause, read_gc_pauses
from bench.machine import Machine
from bench.slack_load import PHASE_TIMEOUT, Sample, open_loop, percentile, post, slash_command
from bench.slack_servers import (
    TimedStandIn,
    child_server,
    cpu_seconds,
    free_port,
    run_threadwork,
)
from bot.budget import Rate
from bot.delivery import CHANNEL_POSTS
from bot.logging import configure_logging
from channels.slack.adapter_http import EVENTS_PATH
from tests.slack.conftest import ALICE

RESULTS = Path(__file__).parent / "results" / "outbox_pace.md"
#: p99 from sending ``/task assign`` to the directive reaching Slack, in seconds.
MAX_DIRECTIVE_P99 = 0.100
#: A channel's backlog drains at least this fast, in posts a second (Slack allows about 1).
MIN_DRAIN_RATE = 0.9
#: Arrival times are taken in this process, after the server's call: a stretch of posts counts
#: as faster than the limit only beyond this much timing noise.
TIMING_SLACK = 0.05


@dataclass
class PacedStandIn(TimedStandIn):
    """The timed stand-in, also noting when every post reached each channel."""

    posted_at: dict[str, list[float]] = field(default_factory=dict)

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        self.posted_at.setdefault(args["channel"], []).append(time.perf_counter())
        return super()._chat_postMessage(args)

    async def posts_in(self, channel: str, count: int, within: float) -> list[float]:
        """The arrival times of the first ``count`` posts in ``channel``, once there are that
        many. The stand-in runs in this process: there is nothing to wait on but its list."""
        async with asyncio.timeout(within):
            while len(self.posted_at.get(channel, [])) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return self.posted_at[channel][:count]


@dataclass(frozen=True)
class Burst:
    """assign -> directive at one rate."""

    rate: float
    channels: int
    latencies: list[float]
    acks: list[float]
    slips: list[float]
    #: The server's CPU seconds (all threads) from the first send to the last directive.
    cpu: float
    wall: float
    #: perf_counter at the first send and at the last directive's arrival.
    window: tuple[float, float]


@dataclass(frozen=True)
class Backlog:
    """One channel's backlog as it reached Slack."""

    arrivals: list[float]
    rate: Rate

    @property
    def drain_rate(self) -> float:
        """Posts a second after the burst: from the last post of the burst to the last post."""
        burst = int(self.rate.burst)
        span = self.arrivals[-1] - self.arrivals[burst - 1]
        return (len(self.arrivals) - burst) / span

    @property
    def overall_rate(self) -> float:
        return (len(self.arrivals) - 1) / (self.arrivals[-1] - self.arrivals[0])

    @property
    def excess(self) -> float:
        """The most posts any stretch had beyond what the limit allows for it (<= 0: none)."""
        per_second = self.rate.per_minute / 60
        worst = -math.inf
        for i, first in enumerate(self.arrivals):
            for j in range(i, len(self.arrivals)):
                span = self.arrivals[j] - first + TIMING_SLACK
                worst = max(worst, (j - i + 1) - (self.rate.burst + span * per_second))
        return worst


@dataclass
class Run:
    command_line: str
    machine: Machine
    bursts: list[Burst] = field(default_factory=list)
    backlog: Backlog | None = None
    seconds: float = 0.0
    #: The server's garbage-collector pauses over the whole run.
    pauses: list[Pause] = field(default_factory=list)

    def pauses_in(self, burst: Burst) -> list[Pause]:
        return [p for p in self.pauses if p.overlaps(*burst.window)]


async def command(http: aiohttp.ClientSession, base: str, text: str, channel: str) -> Sample:
    """Runs a ``/task`` command and fails loudly unless threadwork accepted it."""
    sample = await post(http, base + EVENTS_PATH, slash_command(text, channel))
    if sample.status != 200 or b":warning:" in sample.reply:
        raise RuntimeError(f"/task {text} in {channel}: {sample.status} {sample.reply!r}")
    return sample


async def bounded(limit: int, coroutines: Iterable[Coroutine[Any, Any, Any]]) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(coroutine: Coroutine[Any, Any, Any]) -> None:
        async with gate:
            await coroutine

    async with asyncio.timeout(PHASE_TIMEOUT):
        await asyncio.gather(*(one(c) for c in coroutines))


async def prepare(
    http: aiohttp.ClientSession, base: str, standin: PacedStandIn, channels: list[str], per: int
) -> None:
    """``per`` tasks in each channel, their cards posted, and the channels' budgets refilled."""
    for n in range(per):  # task numbers in order, channels side by side
        await bounded(8, (command(http, base, f"new Target {n + 1}", c) for c in channels))
    cards = [
        standin.arrival("threadwork_card", f"{c}#{n + 1}", within=PHASE_TIMEOUT)
        for c in channels
        for n in range(per)
    ]
    await asyncio.gather(*cards)
    await asyncio.sleep(CHANNEL_POSTS.burst * 60 / CHANNEL_POSTS.per_minute + 0.2)


async def burst(
    http: aiohttp.ClientSession,
    base: str,
    standin: PacedStandIn,
    rate: float,
    assigns: int,
    channels: list[str],
    pid: int,
) -> Burst:
    """``assigns`` open-loop at ``rate``, round-robin over ``channels``."""
    await prepare(http, base, standin, channels, math.ceil(assigns / len(channels)))
    cpu, first = cpu_seconds(pid), time.perf_counter()

    async def assign(i: int) -> tuple[float, float, float]:
        channel, number = channels[i % len(channels)], i // len(channels) + 1
        sent = time.perf_counter()
        sample = await command(http, base, f"assign {number} coder", channel)
        arrival = await standin.arrival("threadwork_directive", f"{channel}#{number}", within=60)
        return arrival.at - sent, sample.seconds, arrival.at

    paced = await open_loop(assigns, rate, assign)
    latencies = [latency for latency, _, _ in paced.results]
    say(
        f"assign -> directive at {rate:g}/s over {len(channels)} channels: "
        f"p99 {percentile(latencies, 99) * 1000:.1f} ms"
    )
    acks = [ack for _, ack, _ in paced.results]
    window = (first, max(at for _, _, at in paced.results))
    cpu = cpu_seconds(pid) - cpu
    return Burst(rate, len(channels), latencies, acks, paced.slips, cpu, paced.wall, window)


async def backlog(
    http: aiohttp.ClientSession, base: str, standin: PacedStandIn, count: int
) -> Backlog:
    """``count`` cards created back to back in one channel, timed as they reach Slack."""
    channel = "CBACKLOG"
    for n in range(count):
        await command(http, base, f"new Backlog {n + 1}", channel)
    within = PHASE_TIMEOUT + count * 60 / CHANNEL_POSTS.per_minute
    result = Backlog(await standin.posts_in(channel, count, within), CHANNEL_POSTS)
    say(f"backlog of {count}: {result.drain_rate:.3f} posts/s after the burst")
    return result


async def bench(args: argparse.Namespace, command_line: str) -> Run:
    run = Run(command_line, Machine.read())
    started = time.perf_counter()
    standin = PacedStandIn(users={ALICE: {"is_admin": False, "name": "alice"}})
    await standin.start()
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=PHASE_TIMEOUT)
    try:
        with tempfile.TemporaryDirectory(prefix="threadwork_bench_pace_") as workdir:
            await bench_server(run, args, standin, Path(workdir), connector, timeout)
    finally:
        await standin.close()
    run.seconds = time.perf_counter() - started
    return run


async def bench_server(
    run: Run,
    args: argparse.Namespace,
    standin: PacedStandIn,
    workdir: Path,
    connector: aiohttp.TCPConnector,
    limits: aiohttp.ClientTimeout,
) -> None:
    """Starts threadwork on a fresh database and runs the bursts, then the backlog."""
    async with aiohttp.ClientSession(connector=connector, timeout=limits) as http:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        database_url = f"sqlite:///{workdir / 'threadwork.db'}"
        gc_log = workdir / "gc.log"
        server_args = (database_url, standin.url, port, str(workdir / "server.log"), str(gc_log))
        async with child_server(run_threadwork, server_args, base + "/readyz", http) as server:
            assert server.pid is not None, "the process has started"
            for n, rate in enumerate(float(r) for r in args.rates.split(",")):
                channels = [f"CP{n}X{i:03d}" for i in range(args.channels)]
                run.bursts.append(
                    await burst(http, base, standin, rate, args.assigns, channels, server.pid)
                )
            run.backlog = await backlog(http, base, standin, args.backlog)
        run.pauses = read_gc_pauses(gc_log)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def spread(values: list[float]) -> str:
    """p50 / p99 / max."""
    return " / ".join(ms(v) for v in (percentile(values, 50), percentile(values, 99), max(values)))


def report(run: Run) -> str:
    m = run.machine
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`{run.command_line}` (whole run {run.seconds:.0f} s).",
        "",
        f"- Machine: {m.cpu}, nproc {m.nproc}, {m.ram_gib:.1f} GiB RAM, {m.os}; load average "
        f"at start {m.load_average}. Python {m.python}; {m.libraries}.",
        "- threadwork: `bot.root.serve` in its own process (SQLite, WAL), default "
        "DeliverySettings; the load generator and the Slack stand-in share this process.",
        "",
        "| measurement | value | target | result |",
        "|---|---|---|---|",
    ]
    for b in run.bursts:
        p99 = percentile(b.latencies, 99)
        verdict = "pass" if p99 < MAX_DIRECTIVE_P99 else "**FAIL**"
        lines += [
            f"| assign -> directive p50 / p99 / max, {len(b.latencies)} assigns at {b.rate:g}/s "
            f"over {b.channels} channels | {spread(b.latencies)} | p99 < {ms(MAX_DIRECTIVE_P99)}"
            f" | {verdict} |",
            f"| `/task assign` ack p50 / p99 / max at {b.rate:g}/s | {spread(b.acks)} | | |",
            f"| load generator lateness p99 at {b.rate:g}/s | {ms(percentile(b.slips, 99))} | | |",
            f"| server CPU per assign at {b.rate:g}/s (share of one core) | "
            f"{ms(b.cpu / len(b.latencies))} ({b.cpu / b.wall:.0%}) | | |",
            f"| server's garbage-collector pauses during the {b.rate:g}/s burst: count, longest "
            f"| {pause_line(run.pauses_in(b))} | | |",
        ]
    lines.append(
        f"| server's garbage-collector pauses over the whole run: count, longest "
        f"| {pause_line(run.pauses)} | | |"
    )
    if run.backlog is not None:
        k = run.backlog
        drain = "pass" if k.drain_rate >= MIN_DRAIN_RATE else "**FAIL**"
        within = "pass" if k.excess <= 0 else "**FAIL**"
        lines += [
            f"| backlog of {len(k.arrivals)} posts in one channel: drain rate after the burst "
            f"| {k.drain_rate:.3f} posts/s | >= {MIN_DRAIN_RATE} posts/s | {drain} |",
            f"| same, over all its posts | {k.overall_rate:.3f} posts/s | | |",
            f"| most posts beyond Slack's limit ({k.rate.per_minute:g}/min, burst "
            f"{k.rate.burst:g}) in any stretch | {max(0.0, k.excess):.2f} | 0 | {within} |",
        ]
    return "\n".join(lines) + "\n"


def pause_line(pauses: list[Pause]) -> str:
    """How many collections took 1 ms or more, and the longest (with its generation)."""
    if not pauses:
        return "none of 1 ms or more"
    longest = max(pauses, key=lambda p: p.seconds)
    return f"{len(pauses)}, {ms(longest.seconds)} (generation {longest.generation})"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.outbox_pace",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--assigns", type=int, default=60, help="assigns at each rate")
    parser.add_argument("--channels", type=int, default=20, help="channels the assigns go to")
    parser.add_argument("--rates", default="4,20", help="assigns per second, comma-separated")
    parser.add_argument("--backlog", type=int, default=30, help="posts in the backlog channel")
    parser.add_argument("--write", type=Path, default=RESULTS, help="Markdown file to write")
    return parser.parse_args(argv)


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configure_logging("WARNING")
    command_line = shlex.join([".venv/bin/python", "-m", "bench.outbox_pace", *argv])
    text = report(asyncio.run(bench(args, command_line)))
    args.write.parent.mkdir(parents=True, exist_ok=True)
    args.write.write_text(text)
    print(f"\n{text}\nwrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
