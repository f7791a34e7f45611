"""``threadwork sandbox``: how soon its page answers, and how soon an assigned task reaches review
in the page.

Run from the repository root (about a minute; everything stays on 127.0.0.1; needs Debian's
chromium and Playwright, as the browser tests do)::

    .venv/bin/python -m bench.sandbox [--starts 5] [--trials 5] [--write docs/benchmarks.md]

- start -> page answers: ``threadwork sandbox`` started as a person starts it (the console
  script, a new process) until ``GET /`` answers 200, polled every 20 ms. A fresh directory each
  time (the database is created and migrated), then again on the database it left (a restart).
- ``/task assign N demo`` -> *In review* in the page: in chromium, on the sandbox's page, a task
  made with ``/task new`` and assigned by typing the command in the composer; from pressing
  Enter to the card in the page showing ``in_review`` (the page's own clock, a MutationObserver
  on the message list). Once with the demo agent's words paced as a person watches them (40 ms a
  word, the default), and once on a sandbox whose demo agent says them at once
  (``--demo-word-s 0``): threadwork's own time, the script's pauses left out.

Percentiles are nearest-rank: with 5 trials the p90 is the slowest.
"""

import argparse
import math
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import Machine, load_average
from bench.sections import write_section
from tests.sandbox.process import SandboxProcess

TITLE = "## The sandbox: start-up, and assign -> in review in the page (issue 13)"
START = "<!-- bench.sandbox:start -->"
END = "<!-- bench.sandbox:end -->"
CHROMIUM = "/usr/bin/chromium"
#: The issue's bound on start -> page answers.
START_TARGET_S = 3.0
#: How the page's own clock sees the task reach review: the time from the composer's Enter to
#: the first mutation after which the card reads in_review.
WATCH = """([title, line]) => new Promise((resolve) => {
  const input = document.getElementById("composer-input");
  const log = document.getElementById("messages");
  const card = () => [...log.querySelectorAll("article.message")].find(
    (m) => m.querySelector(".blocks") && m.textContent.includes(title));
  const done = () => card() && card().textContent.includes("in_review");
  const began = performance.now();
  new MutationObserver((_, observer) => {
    if (done()) { observer.disconnect(); resolve(performance.now() - began); }
  }).observe(log, { childList: true, subtree: true, characterData: true });
  input.value = line;
  input.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true }));
})"""


@dataclass
class Run:
    command_line: str
    machine: Machine
    date: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    fresh: list[float] = field(default_factory=list)
    restart: list[float] = field(default_factory=list)
    paced: list[float] = field(default_factory=list)
    unpaced: list[float] = field(default_factory=list)
    load_after: str = ""


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f} s" for v in (percentile(values, 50), max(values)))


def time_starts(run: Run, count: int) -> None:
    """Starts ``count`` sandboxes on fresh directories, and each again on what it left."""
    for _ in range(count):
        with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as directory:
            for times in (run.fresh, run.restart):
                sandbox = SandboxProcess(Path(directory))
                sandbox.start()
                try:
                    times.append(sandbox.wait_until_answering())
                finally:
                    sandbox.stop()


def time_reviews(times: list[float], trials: int, word_s: str) -> None:
    """``trials`` tasks assigned to demo from the page's composer, timed by the page."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as directory:
        sandbox = SandboxProcess(Path(directory), args=("--demo-word-s", word_s))
        sandbox.start()
        try:
            sandbox.wait_until_answering()
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox"]
                )
                page = browser.new_page()
                page.goto(sandbox.url + "/")
                page.wait_for_selector("#connection[data-state=live]")
                for n in range(1, trials + 2):  # the first is a warm-up
                    seconds = review(page, n) / 1000
                    if n > 1:
                        times.append(seconds)
                browser.close()
        finally:
            sandbox.stop()


def review(page: Any, n: int) -> float:
    """Milliseconds from ``/task assign N demo`` to task N's card in review, in the page."""
    title = f"Bench task {n}"
    composer = page.locator("#composer-input")
    composer.fill(f"/task new {title}")
    composer.press("Enter")
    page.locator("#messages article.message:has(.blocks)", has_text=title).wait_for()
    return float(page.evaluate(WATCH, [title, f"/task assign {n} demo"]))


def machine_line(run: Run) -> str:
    return run.machine.line(run.load_after, f"; chromium {chromium_version()}")


def chromium_version() -> str:
    import subprocess

    done = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=False)  # noqa: S603  # a fixed path
    return done.stdout.strip().removeprefix("Chromium ").split()[0] if done.stdout else "?"


def section(run: Run) -> str:
    met = max(run.fresh + run.restart) < START_TARGET_S
    verdict = "met" if met else "**missed**"
    lines = [
        f"Measured {run.date} by `{run.command_line}` on {machine_line(run)}",
        "",
        "| measurement | target | p50 / max |",
        "|---|---|---|",
        f"| `threadwork sandbox` -> page answers, new database (created and migrated), "
        f"{len(run.fresh)} starts | < {START_TARGET_S:g} s | {verdict}: {spread(run.fresh)} |",
        f"| the same, on the database a run left (a restart), {len(run.restart)} starts "
        f"| < {START_TARGET_S:g} s | {verdict}: {spread(run.restart)} |",
        f"| `/task assign N demo` -> *In review* in the page, the demo's words at 40 ms each "
        f"(what a person watches), {len(run.paced)} tasks | | {spread(run.paced)} |",
        f"| the same, the demo's words at once (`--demo-word-s 0`): threadwork's own time, "
        f"{len(run.unpaced)} tasks | | {spread(run.unpaced)} |",
    ]
    return "\n".join([START, "", *lines, "", END])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sandbox",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--starts", type=int, default=5, help="timed starts of each kind")
    parser.add_argument("--trials", type=int, default=5, help="timed tasks of each pace")
    parser.add_argument("--write", type=Path, help="write the section into this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    run = Run(shlex.join([".venv/bin/python", "-m", "bench.sandbox", *argv]), Machine.read())
    time_starts(run, args.starts)
    time_reviews(run.paced, args.trials, "0.04")
    time_reviews(run.unpaced, args.trials, "0")
    run.load_after = load_average()
    text = section(run)
    if args.write is not None:
        write_section(args.write, TITLE, START, END, text)
    print(text)
    return 0 if max(run.fresh + run.restart) < START_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
