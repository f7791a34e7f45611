"""The built-in agent runtime benchmark: ``python -m bench.agents_runtime``.

Measures, against the Anthropic stand-in through the real anthropic SDK, on SQLite files and the
real clock: steps per second with many concurrent tasks (and the CPU per step), the latency
from an assign's commit to the model's first request, and prompt-cache reuse over a 50-message
thread; then times each part of a step alone. Writes a Markdown section to
``bench/results/agents_runtime.md`` (replacing only the generated part between its markers, so
notes written around it survive) and prints it. Everything stays on 127.0.0.1.
"""

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from bench.agents_anatomy import measure_anatomy
from bench.agents_cache import measure_cache
from bench.agents_report import Report, render, write
from bench.agents_rig import log_to
from bench.agents_throughput import ThroughputResult, Variant, measure_throughput
from bench.agents_wake import measure_wake
from bench.machine import Machine, load_average

RESULTS = Path(__file__).parent / "results" / "agents_runtime.md"
LIBRARIES = ("anthropic", "httpx2", "aiohttp", "sqlalchemy", "aiosqlite", "mcp", "structlog")
_PROBLEM = re.compile(r"\[(warning|error|critical)\s*\]\s+(\S+)|\b(WARNING|ERROR|CRITICAL)\s+(\S+)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.agents_runtime", description=__doc__)
    parser.add_argument("--tasks", type=int, default=50, help="concurrent tasks per round")
    parser.add_argument("--updates", type=int, default=5, help="post_update steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each variant")
    parser.add_argument("--lone-updates", type=int, default=29, help="steps - 1 of the lone run")
    parser.add_argument("--assigns", type=int, default=100, help="sequential assigns timed")
    parser.add_argument("--messages", type=int, default=50, help="thread messages for caching")
    parser.add_argument("--cache-updates", type=int, default=25, help="steps in the cache runs")
    parser.add_argument("--repeats", type=int, default=100, help="calls per part of a step")
    parser.add_argument("--within", type=float, default=60.0, help="seconds any one wait may take")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the section is written")
    return parser.parse_args(argv)


async def measure(args: argparse.Namespace, command: str) -> Report:
    """Runs every part, with threadwork's logs going to a file in a scratch directory."""
    started, machine = time.perf_counter(), Machine.read()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="bench-agents-") as scratch:
        directory = Path(scratch)
        log_path = directory / "threadwork.log"
        with log_path.open("w") as log, contextlib.redirect_stderr(log):
            log_to(log)
            rounds = await _rounds(directory, args)
            _progress("wake latency")
            wake = await measure_wake(directory, args.assigns, args.within)
            _progress("prompt caching")
            cache = await measure_cache(directory, args.messages, args.cache_updates, args.within)
            _progress("step anatomy")
            anatomy = await measure_anatomy(directory, args.repeats)
        problems = log_problems(log_path.read_text())
    return Report(
        date=date,
        command=command,
        seconds=time.perf_counter() - started,
        process_seconds=process_age(),
        machine=machine,
        load_at_end=load_average(),
        versions=", ".join(f"{name} {version(name)}" for name in LIBRARIES),
        rounds=rounds,
        wake=wake,
        cache=cache,
        anatomy=anatomy,
        log_problems=problems,
    )


async def _rounds(directory: Path, args: argparse.Namespace) -> list[ThroughputResult]:
    """Alternates the variants round by round, so drifting machine load hits both alike."""
    plans = [
        (args.tasks, args.updates, (Variant.AS_WIRED, Variant.QUIET_ROOT_LOGGER)),
        (1, args.lone_updates, (Variant.AS_WIRED, Variant.NO_COMMIT_WAKE)),
    ]
    rounds = []
    for tasks, updates, variants in plans:
        for n in range(1, args.rounds + 1):
            for variant in variants:
                _progress(f"steps/s: {tasks} task(s), round {n}, {variant}")
                result = await measure_throughput(directory, tasks, updates, args.within, variant)
                rounds.append(result)
    return rounds


def log_problems(text: str) -> dict[str, int]:
    """Warning and error lines in the log, counted by level and event (or logger message)."""
    found: Counter[str] = Counter()
    for line in text.splitlines():
        match = _PROBLEM.search(line)
        if match is not None:
            level, what = match.group(1) or match.group(3), match.group(2) or match.group(4)
            found[f"{level.lower()} {what}"] += 1
    return dict(found)


def process_age() -> float:
    """Seconds since this process started (imports included), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    started = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19]) / ticks
    return float(Path("/proc/uptime").read_text().split()[0]) - started


def _progress(what: str) -> None:
    print(f"[bench.agents_runtime] {what}", file=sys.stdout, flush=True)


def main() -> None:
    args = parse_args(sys.argv[1:])
    command = shlex.join([".venv/bin/python", "-m", "bench.agents_runtime", *sys.argv[1:]])
    report = asyncio.run(measure(args, command))
    section = render(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, section)
    print(section)


if __name__ == "__main__":
    main()
