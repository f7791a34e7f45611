"""One command of one attempt, in a process group of its own, and the tail of what it printed.

The command runs under ``reaper.py``, the leader of a new session and process group, so one
signal reaches everything it starts, and the group dies with the worker (even with
``kill -9``). The prompt goes to its stdin, which is then closed; stdout and stderr are read as
one stream into an ``OutputTail``.
"""

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

logger = structlog.get_logger(__name__)

REAPER = Path(__file__).with_name("reaper.py")
#: After SIGTERM, how long the group has before SIGKILL (the reaper's grace, and the worker's).
KILL_GRACE_S = 2.0
#: Lines of output kept per run: the failure tail's artifact is the last of them.
KEPT_LINES = 200
#: The longest line kept; the rest of it is cut.
MAX_LINE_CHARS = 500
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


class OutputTail:
    """The last lines a command printed, without terminal escapes; ``version`` counts lines."""

    def __init__(self, kept: int = KEPT_LINES) -> None:
        self._lines: deque[str] = deque(maxlen=kept)
        self.version = 0
        self.changed = asyncio.Event()

    def add(self, raw: bytes) -> None:
        line = _ANSI.sub("", raw.decode(errors="replace")).rstrip("\r\n")
        self._lines.append(line.replace("\r", "")[:MAX_LINE_CHARS])
        self.version += 1
        self.changed.set()

    def last(self, lines: int, chars: int) -> str:
        """The newest ``lines`` lines, at most ``chars`` characters (the newest win)."""
        return "\n".join(list(self._lines)[-lines:])[-chars:]


class CommandProcess:
    """A started command; ``wait`` for its exit status, ``stop`` to end its group."""

    def __init__(self, process: asyncio.subprocess.Process, tail: OutputTail) -> None:
        self._process = process
        self.tail = tail
        self._reader = asyncio.create_task(self._read(), name=f"output-{process.pid}")

    @property
    def pgid(self) -> int:
        """The process group's id: the reaper's pid."""
        return self._process.pid

    @classmethod
    async def start(
        cls, argv: Sequence[str], cwd: Path, env: Mapping[str, str], prompt: str
    ) -> "CommandProcess":
        """Starts ``argv`` in ``cwd`` with exactly ``env``, the prompt on its stdin."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            str(REAPER),
            str(os.getpid()),
            str(KILL_GRACE_S),
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        started = cls(process, OutputTail())
        started._feed(prompt)
        return started

    def _feed(self, prompt: str) -> None:
        """Writes the prompt and closes stdin (print-mode CLIs read it to its end)."""
        stdin = self._process.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(prompt.encode())
        stdin.close()  # a command that never reads it gets EOF; the buffer is dropped

    async def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readline()
            except ValueError:  # a line longer than the stream's limit: keep its end
                line = b"(a line too long to keep)"
            if not line:
                return
            self.tail.add(line)

    async def wait(self) -> int:
        """The command's exit status, once it and its group ended (128 + N for signal N)."""
        code = await self._process.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):  # what the group still had to print
                await asyncio.shield(self._reader)
        return 128 - code if code < 0 else code

    async def stop(self) -> None:
        """Ends the whole group: SIGTERM, then SIGKILL after the grace; returns once it is gone."""
        if self._process.returncode is None:
            _signal_group(self.pgid, signal.SIGTERM)
            try:
                async with asyncio.timeout(KILL_GRACE_S + 0.5):
                    await self._process.wait()
            except TimeoutError:
                logger.warning("worker.command_killed", pgid=self.pgid)
                _signal_group(self.pgid, signal.SIGKILL)
                await self._process.wait()
        await self.gone()

    async def gone(self) -> None:
        """Returns once no process of the group is left (bounded by one more grace)."""
        for _ in range(int(KILL_GRACE_S / 0.02)):
            if not group_alive(self.pgid):
                return
            await asyncio.sleep(0.02)  # the kernel reparents and reaps: nothing to wait on
        _signal_group(self.pgid, signal.SIGKILL)

    async def close(self) -> None:
        """Stops the group if it runs, and the reader."""
        await self.stop()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)
