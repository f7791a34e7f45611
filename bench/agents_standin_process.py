"""The Anthropic stand-in in its own process, so the runner's CPU is measured alone.

The child is ``python -m bench.agents_standin_process UPDATES`` (it imports only the stand-in
and aiohttp, so it starts fast). It speaks JSON lines: it prints ``{"url": ...}`` once it
listens, answers each ``tally`` line on stdin with how many requests it has received and the CPU
it has used, and stops at end of input. Every wait on it is bounded.
"""

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from bench.agents_turns import Worker
from tests.agents.standins import AnthropicStandIn

PIPE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Tally:
    """What the stand-in process has done so far."""

    requests: int
    cpu_seconds: float


class RemoteStandIn:
    """The parent's handle on the stand-in process."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self._process = process
        self.url = url

    async def tally(self) -> Tally:
        assert self._process.stdin is not None
        self._process.stdin.write(b"tally\n")
        await self._process.stdin.drain()
        answer = await _read_line(self._process)
        return Tally(int(answer["requests"]), float(answer["cpu_seconds"]))


async def _read_line(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    async with asyncio.timeout(PIPE_TIMEOUT_S):
        line = await process.stdout.readline()
    if not line:
        raise RuntimeError(f"the stand-in process exited (code {process.returncode})")
    answer: dict[str, Any] = json.loads(line)
    return answer


@asynccontextmanager
async def standin_process(updates: int) -> AsyncIterator[RemoteStandIn]:
    """Starts the stand-in process, yields its handle, then ends it (killing it if it hangs)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        str(updates),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        hello = await _read_line(process)
        yield RemoteStandIn(process, str(hello["url"]))
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def serve(updates: int) -> None:
    """Child process: serves a ``Worker(updates)`` stand-in until stdin closes."""
    standin = AnthropicStandIn(Worker(updates))
    await standin.start()
    try:
        _say({"url": standin.url})
        while (await asyncio.to_thread(sys.stdin.readline)).strip() == "tally":
            _say({"requests": len(standin.requests), "cpu_seconds": time.process_time()})
    finally:
        await standin.close()


def _say(message: dict[str, object]) -> None:
    print(json.dumps(message), flush=True)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
