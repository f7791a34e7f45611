"""Tool servers for built-in agents: what one stdio MCP server costs a run, per step, and how much
of each step's input is read from the prompt cache.

Run from the repository root (about a minute; everything stays on this machine)::

    .venv/bin/python -m bench.tool_servers [--tasks 5] [--steps 10] [--write docs/benchmarks.md]

The service is ``bot.root.open_service`` in this process (``bench.agents_rig``: SQLite file, real
clock, the runner's loop running), the model the Anthropic stand-in (real anthropic client) in
the same event loop. The tool server is the real ``mcp-server-git`` on a temporary repository of
20 commits, started by the run over stdio as ``/task-admin agent tools ... add git stdio ...``
would have it. Three configurations, ``--tasks`` tasks each, one at a time; every run has
``--steps`` steps, each one model turn calling one tool, then sets in_review:

* ``none``: an agent without tool servers; each step calls threadwork's ``list_my_tasks``.
* ``git, own tool``: the same agent with the git server; each step still calls ``list_my_tasks``
  (what the bigger tool list alone costs).
* ``git, git tool``: each step calls ``git__git_log`` (``max_count`` 5) through the server.

A step is the time between two consecutive requests of a run at the stand-in (the model's
streamed answer, the tool call, the step's writes); the run's start is assign -> first request
(with a server: its process started and its tools listed). Cache-read share of a step's input:
``cache_read / (input + cache_creation + cache_read)`` tokens, as the stand-in bills it.
"""

import argparse
import asyncio
import itertools
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.agents_rig import AGENT, CHANNEL, MODEL, PERSON, Rig, open_rig
from bench.agents_turns import steps_done, task_ref
from bench.machine import Machine, load_average
from bench.sections import write_section
from bot.agents import AgentKind, AgentSettings
from bot.logging import configure_logging
from bot.task import Actor
from bot.tool_servers import ToolServerAdd, parse_request
from tests.agents.standins import AnthropicStandIn, Recorded, Reply, ToolUse
from tests.agents.tool_servers import git_server, make_repository, quoted

TITLE = "## Tool servers for built-in agents (issue 12)"
START = "<!-- bench.tool_servers:start -->"
END = "<!-- bench.tool_servers:end -->"
NONE, OWN, GIT = "none", "git, own tool", "git, git tool"
#: The agent with the git server (the rig's own agent has none).
WITH_GIT = "claude-git"


@dataclass
class Config:
    """One configuration's runs, as the stand-in saw their requests."""

    name: str
    runs: list[list[Recorded]] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    #: The configuration's very first request (its tool definitions not cached yet).
    cold: Recorded | None = None

    @property
    def steps(self) -> list[float]:
        return [b.at - a.at for run in self.runs for a, b in itertools.pairwise(run)]

    @property
    def read_shares(self) -> list[float]:
        """The cache-read share of every step's input after each run's first."""
        return [_read_share(r) for run in self.runs for r in run[1:]]

    @property
    def first_read_shares(self) -> list[float]:
        return [_read_share(run[0]) for run in self.runs]

    @property
    def tool_tokens(self) -> int:
        """The tool definitions' tokens (chars // 4, as the stand-in counts) in a request."""
        first = self.runs[0][0]
        return first.cache.boundaries[len(first.body["tools"]) - 1][0] // 4


def _read_share(record: Recorded) -> float:
    usage = record.usage or {}
    read = int(usage.get("cache_read_input_tokens", 0))
    billed = read + int(usage.get("input_tokens", 0))
    billed += int(usage.get("cache_creation_input_tokens", 0))
    return read / billed if billed else 0.0


class Scripted:
    """Answers every run's steps with its configuration's tool, then in_review."""

    def __init__(self, steps: int, repository: Path) -> None:
        self.steps, self.repository = steps, repository
        #: The configuration of each task, by ref.
        self.modes: dict[str, str] = {}

    def __call__(self, body: dict[str, Any]) -> Reply:
        ref, done = task_ref(body), steps_done(body)
        if done >= self.steps:
            status = {"task": ref, "status": "in_review", "note": "measured"}
            return Reply([ToolUse("update_task_status", status)])
        if self.modes[ref] == GIT:
            arguments = {"repo_path": str(self.repository), "max_count": 5}
            return Reply([ToolUse("git__git_log", arguments)])
        return Reply([ToolUse("list_my_tasks", {})])


async def measure(args: argparse.Namespace, workdir: Path) -> list[Config]:
    messages = [f"Commit {n}: a change to the service" for n in range(1, 21)]
    repository = make_repository(workdir / "repo", messages)
    standin = AnthropicStandIn()
    await standin.start()
    scripted = Scripted(args.steps, repository)
    standin.responder = scripted
    try:
        async with open_rig(workdir / "bench.db", standin.url, args.steps + 5) as rig:
            await _add_agent_with_git(rig, repository)
            rig.start_runner()
            configs = [Config(NONE), Config(OWN), Config(GIT)]
            for n in range(args.warmup + args.tasks):
                for config in configs:  # interleaved, so a drift of the machine hits all three
                    run, start = await _one_run(rig, standin, scripted, config.name)
                    if n >= args.warmup:
                        config.runs.append(run)
                        config.starts.append(start)
                    elif n == 0:
                        config.cold = run[0]
            return configs
    finally:
        await standin.close()


async def _add_agent_with_git(rig: Rig, repository: Path) -> None:
    """A second agent like the rig's, with the git server, as an admin would give it one."""
    await rig.core.registry.add_agent(
        WITH_GIT, AgentKind.CLAUDE, settings=AgentSettings(model=MODEL, max_tokens=1024)
    )
    request = parse_request(["add", "git", "stdio", quoted(git_server(repository))])
    assert isinstance(request, ToolServerAdd)
    await rig.core.admin.add_tool_server(Actor.system("bench"), WITH_GIT, request)


async def _one_run(
    rig: Rig, standin: AnthropicStandIn, scripted: Scripted, mode: str
) -> tuple[list[Recorded], float]:
    """One task worked by its configuration's agent; its requests, and assign -> first one."""
    task = await rig.core.board.create_task(CHANNEL, f"Probe ({mode})", Actor.user(PERSON))
    scripted.modes[str(task.ref)] = mode
    first = len(standin.requests)
    sent = time.monotonic()
    await rig.core.board.assign_task(task.ref, AGENT if mode == NONE else WITH_GIT, PERSON)
    async with asyncio.timeout(120):
        await rig.until_finished({task.id})
    requests = standin.requests[first:]
    return requests, requests[0].at - sent


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def p50_p90(values: list[float]) -> str:
    return f"{ms(percentile(values, 50))} / {ms(percentile(values, 90))}"


def _rows(configs: list[Config]) -> list[str]:
    """The table's rows, one measurement each, a column per configuration."""

    def row(name: str, cells: list[str]) -> str:
        return f"| {name} | " + " | ".join(cells) + " |"

    def median(values: list[float]) -> float:
        return percentile(values, 50)

    base = median(configs[0].steps)
    extra = ["-"] + [ms(median(c.steps) - base) for c in configs[1:]]
    return [
        row(
            f"step, p50 / p90 ({len(configs[0].steps)} steps each)",
            [p50_p90(c.steps) for c in configs],
        ),
        row("extra latency per step vs none, p50", extra),
        row(
            "run start: assign -> first model request, p50", [ms(median(c.starts)) for c in configs]
        ),
        row("tool definitions in each request (tokens)", [str(c.tool_tokens) for c in configs]),
        row("first request ever: tokens written to the cache", [_written(c) for c in configs]),
        row(
            "tokens written to the cache per later step, median",
            [_later_writes(c) for c in configs],
        ),
        row(
            "cache-read share of a step's input, a run's first step, median",
            [pct(median(c.first_read_shares)) for c in configs],
        ),
        row("cache-read share, later steps: median (lowest)", [_shares(c) for c in configs]),
    ]


def section(configs: list[Config], machine: Machine, command: str, date: str, load: str) -> str:
    """The generated part of the docs' section: where it ran, the table, what it says."""
    none, own, git = configs
    extra_own = percentile(own.steps, 50) - percentile(none.steps, 50)
    extra_git = percentile(git.steps, 50) - percentile(none.steps, 50)
    start_extra = percentile(git.starts, 50) - percentile(none.starts, 50)
    sdks = ", ".join(f"{n} {version(n)}" for n in ("anthropic", "mcp", "mcp-server-git"))
    summary = (
        f"One stdio server adds {ms(extra_git)} to a step that calls it (p50) and "
        f"{ms(extra_own)} to one that does not, and {ms(start_extra)} to a run's start "
        "(the server's process and its tool listing). Its tool definitions "
        f"({git.tool_tokens - none.tool_tokens} tokens) were written to the cache once, by "
        "the first request that carried them, and read by every request after it (later "
        f"runs' first steps too): with them, {_median_share(git)} of a step's input is a "
        "cache read."
    )
    where = (
        f"Measured {date} by `{command}` on {machine.cpu}, nproc {machine.nproc}, "
        f"{machine.ram_gib:.1f} GiB RAM, {machine.os}; load average at start "
        f"{machine.load_average}, at end {load}. Python {machine.python}; {sdks}. "
        f"{len(none.runs)} runs per configuration of {len(none.runs[0]) - 1} tool steps each, "
        "after untimed warm-up runs; the model is the in-process stand-in, so a step's own "
        "cost is threadwork's and the tool server's, not a model's."
    )
    header = [f"| measurement | {NONE} | {OWN} | {GIT} |", "|---|---|---|---|"]
    return "\n".join([START, "", where, "", *header, *_rows(configs), "", summary, "", END])


def _written(config: Config) -> str:
    usage = (config.cold.usage or {}) if config.cold else {}
    return str(usage.get("cache_creation_input_tokens", 0))


def _later_writes(config: Config) -> str:
    writes = [
        int((r.usage or {}).get("cache_creation_input_tokens", 0))
        for run in config.runs
        for r in run[1:]
    ]
    return f"{statistics.median(writes):.0f}"


def _shares(config: Config) -> str:
    return f"{_median_share(config)} ({pct(min(config.read_shares))})"


def _median_share(config: Config) -> str:
    return pct(statistics.median(config.read_shares))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tool_servers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=5, help="timed runs per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before them")
    parser.add_argument("--steps", type=int, default=10, help="tool steps per run")
    parser.add_argument("--write", type=Path, help="write the section into this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configure_logging("WARNING")
    command = shlex.join([".venv/bin/python", "-m", "bench.tool_servers", *argv])
    machine = Machine.read()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # The operator permits the interpreter that runs mcp-server-git, as the service's
    # environment would; the rig's settings read it from there.
    os.environ["THREADWORK_TOOL_SERVER_COMMANDS"] = sys.executable
    with tempfile.TemporaryDirectory(prefix="threadwork_bench_tools_") as workdir:
        configs = asyncio.run(measure(args, Path(workdir)))
    load = load_average()
    text = section(configs, machine, command, date, load)
    if args.write is not None:
        write_section(args.write, TITLE, START, END, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
