"""Agent sessions: how fast Stop cancels a built-in agent's run and suspends the thread's
session, and how many ``agents.sessions.setStatus`` calls a task's life costs.

Run from the repository root (about five minutes; everything stays on 127.0.0.1)::

    .venv/bin/python -m bench.session_stop [--trials 30] [--write docs/benchmarks.md]

The service is ``bot.root.open_service`` in this process, as the Slack tests build it, but on the
real clock with its loops running (outbox delivery, the agent runner, the heartbeat, the
reconcile scheduler) and default DeliverySettings: a channel's posts at 60 a minute with a burst
of 3, the workspace's card updates at 50 a minute with a burst of 10. The real slack_sdk talks to
the Slack Web API stand-in, the real anthropic client to the Anthropic stand-in, and the external
agent uses the real MCP client. The stand-ins, the signed requests and the MCP client share the
service's event loop, so every instant is this process's ``time.perf_counter()``.

1. Stop: ``--trials`` tasks (after ``--warmup`` untimed ones), one at a time, in one channel.
   Each is created and assigned to the built-in agent by signed ``/task`` commands, and its
   model call hangs (``Hang``). Once it hangs, its session is ``processing`` and its outbox is
   empty, the trial waits ``--gap`` seconds (Slack's budgets refill, as between people's
   clicks), then POSTs a signed ``agent_session_stopped`` event. Timed from the send: the ack,
   ``Board.stop_task``'s clock (its STOPPED event), the run's asyncio task done (cancelled), the
   hung request ending at the stand-in, the stop notice's post, ``setStatus`` ``suspended``, and
   the card's ``chat.update``.
2. Session calls: ``--tasks`` tasks worked by the built-in agent (two scripted steps: in_progress,
   then in_review) and ``--tasks`` by the external agent over MCP (``wait_for_work``, then
   ``update_task_status`` in_progress and in_review, each once the outbox is empty), each then
   marked done by ``/task status N done``. Once a thread's outbox is empty, its ``setStatus``
   calls are counted (the target: at most one per distinct status), beside the
   ``session_status`` of each ``chat.stopStream`` (a built-in agent's streamed words) and what
   the stand-in's session showed.

Percentiles are nearest-rank: with 30 trials the p99 is the slowest trial.
"""

import argparse
import asyncio
import math
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from bench.machine import Machine, load_average
from bench.sections import write_section
from bench.session_rig import (
    BUILT_IN,
    EXTERNAL,
    SPANS,
    STOP_CHANNEL,
    TARGET_S,
    TARGETS,
    Life,
    StopTrial,
    Told,
    WatchedSlack,
    built_in_life,
    external_life,
    mcp_client,
    open_rig,
    stop_trial,
)
from bot.budget import Rate
from bot.delivery import CHANNEL_POSTS, WORKSPACE_UPDATES
from bot.logging import configure_logging

RESULTS = Path(__file__).parent / "results" / "session_stop.md"
TITLE = "## Agent sessions: Stop and session calls (issue 11)"
START = "<!-- bench.session_stop:start -->"
END = "<!-- bench.session_stop:end -->"


@dataclass
class Run:
    """One invocation: where and how it ran, and what it measured."""

    command_line: str
    machine: Machine
    args: argparse.Namespace
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    trials: list[StopTrial] = field(default_factory=list)
    lives: list[Life] = field(default_factory=list)
    #: The fewest tokens the workspace's card-update bucket, and the stop channel's posting
    #: bucket, held at any Stop's send, replayed from the stand-in's arrivals.
    lowest: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0
    load_after: str = ""


async def bench(run: Run) -> None:
    """The Stop trials, then the built-in agent's tasks, then the external agent's."""
    args = run.args
    with tempfile.TemporaryDirectory(prefix="threadwork_bench_stop_") as workdir:
        async with open_rig(Path(workdir)) as rig:
            opened = time.perf_counter()
            for n in range(args.warmup + args.trials):
                trial = await stop_trial(rig, n + 1, args.gap)
                say(f"stop {n + 1}: " + ", ".join(f"{k} {ms(v)}" for k, v in trial.spans.items()))
                if n >= args.warmup:
                    run.trials.append(trial)
            run.lowest = lowest_tokens(rig.slack, opened, [t.sent for t in run.trials])
            gap = args.life_gap
            built_in = [await built_in_life(rig, n + 1, gap) for n in range(args.tasks)]
            run.lives.append(Life(f"built-in `{BUILT_IN}`", built_in))
            async with mcp_client(rig) as client:
                external = [await external_life(rig, client, n + 1, gap) for n in range(args.tasks)]
            run.lives.append(Life(f"external `{EXTERNAL}` over MCP", external))
            for life in run.lives:
                say(f"{life.kind}: setStatus {counted(t.set_status for t in life.threads)}")


def tokens_at(arrivals: Sequence[float], rate: Rate, opened: float, at: float) -> float:
    """The tokens a bucket of ``rate``, full at ``opened``, held at ``at``, if each arrival
    before it took one as it arrived (the deliverer takes its token just before the call)."""
    per_second, tokens, last = rate.per_minute / 60, rate.burst, opened
    for arrival in sorted(a for a in arrivals if a < at):
        tokens = min(rate.burst, tokens + (arrival - last) * per_second) - 1
        last = arrival
    return min(rate.burst, tokens + (at - last) * per_second)


def lowest_tokens(slack: WatchedSlack, opened: float, sends: list[float]) -> tuple[float, float]:
    updates = slack.times("chat.update")
    posts = slack.times("chat.postMessage", STOP_CHANNEL)
    return (
        min(tokens_at(updates, WORKSPACE_UPDATES, opened, at) for at in sends),
        min(tokens_at(posts, CHANNEL_POSTS, opened, at) for at in sends),
    )


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def spread(values: Sequence[float]) -> str:
    """p50 / p99 / max."""
    return " / ".join(ms(v) for v in (percentile(values, 50), percentile(values, 99), max(values)))


def span_values(run: Run, key: str) -> list[float]:
    return [t.spans[key] for t in run.trials]


def met(run: Run, key: str) -> bool:
    return percentile(span_values(run, key), 99) < TARGET_S


def counted(sequences: Iterable[list[str]]) -> str:
    """Each distinct sequence, with how many threads had it."""
    tally = Counter(" -> ".join(s) or "none" for s in sequences)
    return "; ".join(f"{seq} (x{n})" for seq, n in tally.most_common())


def calls(threads: list[Told]) -> str:
    counts = [len(t.set_status) for t in threads]
    return f"{min(counts)}-{max(counts)} per thread, {sum(counts)} in all"


def low_high(values: list[int]) -> str:
    return f"{min(values)}-{max(values)}"


def verdict(passed: bool) -> str:
    return "pass" if passed else "**FAIL**"


def machine_line(run: Run) -> str:
    sdks = ", ".join(f"{n} {version(n)}" for n in ("slack_sdk", "slack_bolt", "anthropic", "mcp"))
    return run.machine.line(run.load_after, f", {sdks}")


def results(run: Run) -> str:
    """The full breakdown, for ``bench/results/session_stop.md``."""
    a, (updates, posts) = run.args, run.lowest
    lines = [
        f"Measured {run.date} by `{run.command_line}` (whole run {run.seconds:.0f} s).",
        "",
        f"- Machine: {machine_line(run)}",
        "- threadwork: `bot.root.open_service` in this process (SQLite file, real clock, loops "
        "running, default DeliverySettings); the Slack and Anthropic stand-ins, the signed "
        "requests and the MCP client share its event loop.",
        f"- Stop: {len(run.trials)} trials after {a.warmup} untimed, one at a time in one "
        f"channel, each a fresh task; {a.gap:g} s between the trial's set-up settling and its "
        "Stop. Card updates per stopped thread: "
        f"{low_high([t.told.updates for t in run.trials])}. At the "
        f"Stops, the workspace's card-update bucket ({WORKSPACE_UPDATES.per_minute:g}/min, burst "
        f"{WORKSPACE_UPDATES.burst:g}) held at least {max(0.0, updates):.1f} tokens and the channel's "
        f"posting bucket ({CHANNEL_POSTS.per_minute:g}/min, burst {CHANNEL_POSTS.burst:g}) at "
        f"least {max(0.0, posts):.1f} (replayed from the stand-in's arrivals: 1 or more means no Stop's "
        "call waited for the pace).",
        "- setStatus calls on the stopped threads: "
        f"{counted(t.told.set_status for t in run.trials)}.",
        "",
        "| measurement | p50 / p99 / max | target | result |",
        "|---|---|---|---|",
    ]
    for key, name in SPANS.items():
        target = f"p99 < {TARGET_S:g} s" if key in TARGETS else ""
        result = verdict(met(run, key)) if key in TARGETS else ""
        lines.append(f"| {name} | {spread(span_values(run, key))} | {target} | {result} |")
    lines += [
        "",
        f"Session calls: {a.tasks} tasks per agent, one at a time, each assigned "
        f"{a.life_gap:g} s after its card was out. Per task thread: "
        "`agents.sessions.setStatus` calls (the target), the "
        "`session_status` each `chat.stopStream` carried (`-`: none, so Slack shows its "
        "default, active), what the stand-in's session showed, whether the first setStatus "
        "call carried the task's title, and the card's `chat.update` calls.",
        "",
        "| agent | tasks | setStatus calls | setStatus statuses | stream stops | shown "
        "| first call titled | chat.update | target | result |",
        "|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for life in run.lives:
        t = life.threads
        lines.append(
            f"| {life.kind} | {len(t)} | {calls(t)} | {counted(x.set_status for x in t)} "
            f"| {counted(x.stream_stops for x in t)} | {counted(x.shown for x in t)} "
            f"| {sum(x.titled for x in t)} of {len(t)} | {low_high([x.updates for x in t])} "
            f"| at most one per distinct status | {verdict(life.passed)} |"
        )
    return "\n".join(lines) + "\n"


def section(run: Run) -> str:
    """The generated part of the docs' section: the house table, with the command."""
    command = f"`{run.command_line}`"
    n = len(run.trials)
    rows = [
        (f"Stop -> run cancelled, p50 / p99 / max over {n} trials", "cancelled"),
        (f"Stop -> session suspended (setStatus at Slack), over the same {n}", "suspended"),
    ]
    lines = [
        f"Measured {run.date} on {machine_line(run)} Breakdown: `bench/results/session_stop.md`.",
        "",
        "| measurement | command | target | result |",
        "|---|---|---|---|",
    ]
    for i, (name, key) in enumerate(rows):
        result = f"{'met' if met(run, key) else '**missed**'}: {spread(span_values(run, key))}"
        lines.append(
            f"| {name} | {command if i == 0 else 'same'} | p99 < {TARGET_S:g} s | {result} |"
        )
    for life in run.lives:
        t = life.threads
        result = f"{'met' if life.passed else '**missed**'}: {calls(t)}; "
        result += counted(x.set_status for x in t)
        lines.append(
            f"| setStatus calls per task, {life.kind}, {len(t)} tasks | same "
            f"| at most one per distinct status | {result} |"
        )
    return "\n".join([START, "", *lines, "", END])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.session_stop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--trials", type=int, default=30, help="timed Stops")
    parser.add_argument("--warmup", type=int, default=1, help="untimed Stops before them")
    parser.add_argument("--gap", type=float, default=3.0, help="seconds before each Stop")
    parser.add_argument("--tasks", type=int, default=20, help="tasks per kind of agent")
    parser.add_argument(
        "--life-gap", type=float, default=0.0, help="seconds before each of those tasks' assign"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="breakdown to write")
    parser.add_argument("--write", type=Path, help="also write the section into this file")
    return parser.parse_args(argv)


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configure_logging("WARNING")
    command_line = shlex.join([".venv/bin/python", "-m", "bench.session_stop", *argv])
    run = Run(command_line, Machine.read(), args)
    started = time.perf_counter()
    asyncio.run(bench(run))
    run.seconds = time.perf_counter() - started
    run.load_after = load_average()
    text = results(run)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    if args.write is not None:
        write_section(args.write, TITLE, START, END, section(run))
    print(f"\n{text}\nwrote {args.results}" + (f" and {args.write}" if args.write else ""))
    passed = all(met(run, key) for key in TARGETS) and all(life.passed for life in run.lives)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
