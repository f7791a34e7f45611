"""A scripted stand-in for a coding-agent CLI in print mode, run by ``threadwork worker``.

Run as ``python fake_cli.py SCENARIO``. Like a real CLI it reads the prompt from stdin to its
end, and it reaches threadwork through the MCP configuration the worker generated
(THREADWORK_MCP_CONFIG), with the SDK's own client. It appends what it saw and did, one JSON
object a line, to ``$FAKE_CLI_RECORDS/<channel>-<number>.jsonl``.

Scenarios:
- ``work``: posts, moves the task to in_progress, commits a file, prints, exits 0.
- ``fail``: prints a few lines and exits 3.
- ``review_then_fail``: moves the task to in_progress, then in_review, prints, and exits 4.
- ``hang``: starts a child (``sleep``), then waits; on SIGTERM it makes one late tool call
  (``post_update`` at its epoch), records the answer, and exits.
- ``together``: waits until two tasks' commands run at once (or 30 s), then exits 0.
- ``resume``: on the first attempt leaves a marker file in its working directory and hangs;
  on a later one, finding the marker there, exits 0.
"""

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

TASK = os.environ["THREADWORK_TASK"]
EPOCH = int(os.environ["THREADWORK_EPOCH"])
RECORDS = Path(os.environ["FAKE_CLI_RECORDS"])
MARKER = "resume-marker.txt"


def record(**data: Any) -> None:
    RECORDS.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"task": TASK, "epoch": EPOCH, "pid": os.getpid(), "at": time.time()} | data)
    with (RECORDS / f"{TASK.replace('#', '-')}.jsonl").open("a") as file:
        file.write(line + "\n")


async def _calls(calls: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Makes ``calls`` on this task at this epoch in one session of the SDK's client, on the
    server the generated configuration names; each answer is "ok" or the refusal's text."""
    config = json.loads(Path(os.environ["THREADWORK_MCP_CONFIG"]).read_text())  # noqa: ASYNC240 - a fake CLI's start-up
    server = config["mcpServers"]["threadwork"]
    answers = []
    async with (
        httpx2.AsyncClient(headers=server["headers"]) as http,
        Client(streamable_http_client(server["url"], http_client=http)) as client,
    ):
        for tool, arguments in calls:
            result = await client.call_tool(tool, {"task": TASK, "epoch": EPOCH} | arguments)
            text = result.content[0].text if result.is_error else "ok"  # type: ignore[union-attr]
            answers.append(text.removeprefix(f"Error executing tool {tool}: "))
    return answers


def call(*calls: tuple[str, dict[str, Any]]) -> list[str]:
    return asyncio.run(_calls(calls))


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, check=True)  # noqa: S603, S607 - fixed arguments
    return done.stdout.strip()


def started(prompt: str) -> None:
    """Records what the command was given: its prompt, environment and working directory."""
    config = Path(os.environ["THREADWORK_MCP_CONFIG"])
    try:
        branch: str | None = git("rev-parse", "--abbrev-ref", "HEAD")
    except subprocess.CalledProcessError:
        branch = None
    record(
        event="started",
        scenario=sys.argv[1],
        pgid=os.getpgid(0),
        cwd=os.getcwd(),
        branch=branch,
        prompt=prompt,
        prompt_env=os.environ.get("THREADWORK_PROMPT"),
        mcp_url=os.environ.get("THREADWORK_MCP_URL"),
        token_set=bool(os.environ.get("THREADWORK_MCP_TOKEN")),
        config_mode=stat.S_IMODE(config.stat().st_mode),
        config=json.loads(config.read_text()),
    )


def work() -> int:
    posted, moved = call(
        ("post_update", {"text": "fake-cli: on it"}),
        ("update_task_status", {"status": "in_progress"}),
    )
    Path("work.txt").write_text(f"work for {TASK}\n")
    git("add", "work.txt")
    git("-c", "user.name=fake", "-c", "user.email=fake@example.com", "commit", "-qm", "fake work")
    record(event="worked", posted=posted, moved=moved, head=git("rev-parse", "HEAD"))
    for n in range(1, 4):
        print(f"step {n} of 3")
    print("all done")
    return 0


def fail() -> int:
    print("compiling")
    print("error: the flux capacitor is missing")
    return 3


def review_then_fail() -> int:
    moved = call(
        ("update_task_status", {"status": "in_progress"}),
        ("update_task_status", {"status": "in_review", "note": "fake-cli: ready"}),
    )
    record(event="reviewed", moved=moved)
    print("handed over, then crashed")
    return 4


def hang() -> int:
    terminated: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: terminated.append(signum))
    child = subprocess.Popen(["sleep", "600"])  # noqa: S607 - fixed arguments
    record(event="hanging", child=child.pid)
    print("waiting forever", flush=True)
    while not terminated:
        signal.pause()
    [late] = call(("post_update", {"text": "fake-cli: a late word"}))
    record(event="late_call", answer=late)
    return 143


def together() -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = [p for p in RECORDS.glob("*.jsonl") if '"started"' in p.read_text()]
        if len(running) >= 2:
            record(event="together", tasks=len(running))
            print("ran alongside another task")
            return 0
        time.sleep(0.05)  # a fake CLI's own pace, not a test's synchronisation
    return 1


def resume() -> int:
    if Path(MARKER).exists():
        record(event="resumed", marker=Path(MARKER).read_text())
        print("found the first attempt's work")
        return 0
    Path(MARKER).write_text(f"left by epoch {EPOCH}\n")
    print("first attempt, hanging", flush=True)
    while True:
        signal.pause()


SCENARIOS: dict[str, Callable[[], int]] = {
    "work": work,
    "fail": fail,
    "review_then_fail": review_then_fail,
    "hang": hang,
    "together": together,
    "resume": resume,
}


def main() -> int:
    prompt = sys.stdin.read()  # to the end: the worker closes stdin after the prompt
    started(prompt)
    return SCENARIOS[sys.argv[1]]()


if __name__ == "__main__":
    sys.exit(main())
