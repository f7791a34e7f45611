"""One ``threadwork sandbox`` process, as a person starts it: for the browser tests and the bench.

It runs the installed console script on a free port with its database in a directory of the
caller's, with none of the caller's Slack or model settings, and its output in a log file. The
wait for its page polls with a deadline and fails with the log's tail; stopping it sends
SIGTERM, then SIGKILL if it does not exit in time.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

THREADWORK = Path(sys.executable).parent / "threadwork"
#: A loaded 2-core machine takes its time to import the service.
START_TIMEOUT_S = 40.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.02
#: Environment variables a sandbox must not inherit (it makes its own Slack and keys).
_CLEARED = ("SLACK_", "THREADWORK_", "ANTHROPIC_", "OPENAI_", "DATABASE_URL", "PORT", "HOST")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
    return env | {"NO_PROXY": "*", "no_proxy": "*"}


@dataclass
class SandboxProcess:
    directory: Path
    port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "sandbox.log"

    def start(self) -> None:
        """Starts ``threadwork sandbox`` (the clock for start-up timing starts here)."""
        command = [str(THREADWORK), "sandbox", "--port", str(self.port)]
        command += ["--db", str(self.directory / "sandbox.db"), *self.args]
        with self.log.open("ab") as log:
            self.started_at = time.perf_counter()
            self.process = subprocess.Popen(  # noqa: S603  # our own console script, no shell
                command, cwd=self.directory, env=clean_env(), stdout=log, stderr=log
            )

    def wait_until_answering(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Polls the page until it answers 200; returns the seconds since ``start``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the sandbox exited ({self.process.returncode}):\n{self.tail()}"
                )
            if self._answers():
                return time.perf_counter() - self.started_at
            time.sleep(POLL_S)
        raise AssertionError(f"the sandbox's page did not answer in {timeout_s} s:\n{self.tail()}")

    def _answers(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.url + "/", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> int:
        """SIGTERM, and SIGKILL after STOP_TIMEOUT_S; returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        return int(self.process.returncode)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
