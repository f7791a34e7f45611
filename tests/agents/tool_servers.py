"""Real MCP tool servers for the runtime's tests: ``mcp-server-git`` on a temporary repository,
and a small server of our own (``toy_server.py``) with tools that answer big, fail or hang.

Each is launched as a stdio command. ``with_pidfile`` wraps a command so that the server's pid
(kept by ``exec``) is written to a file first: a test can then check that the process and its
process group are gone once the run that started it ended.
"""

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: The commit messages of the repository ``make_repository`` writes, oldest first.
COMMITS = ("Add the health check endpoint", "Log the build version at start")
TOY_SERVER = Path(__file__).with_name("toy_server.py")


def make_repository(path: Path, messages: Sequence[str] = COMMITS) -> Path:
    """A git repository at ``path`` with one commit per message (COMMITS by default)."""
    env = os.environ | {
        "GIT_AUTHOR_NAME": "Test Author",
        "GIT_AUTHOR_EMAIL": "author@example.invalid",
        "GIT_COMMITTER_NAME": "Test Author",
        "GIT_COMMITTER_EMAIL": "author@example.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    _git(env, "init", "-q", str(path))
    for number, message in enumerate(messages):
        (path / f"file{number}.txt").write_text(message)
        _git(env, "-C", str(path), "add", ".")
        _git(env, "-C", str(path), "commit", "-q", "-m", message)
    return path


def _git(env: dict[str, str], *args: str) -> None:
    # git from PATH, as mcp-server-git itself runs it; the arguments are the test's own.
    subprocess.run(["git", *args], check=True, env=env)  # noqa: S603, S607


def git_server(repository: Path) -> list[str]:
    """``mcp-server-git`` serving ``repository``, run by this interpreter."""
    return [sys.executable, "-m", "mcp_server_git", "--repository", str(repository)]


def toy_server() -> list[str]:
    return [sys.executable, str(TOY_SERVER)]


def with_pidfile(command: Sequence[str], pidfile: Path) -> list[str]:
    """``command`` run by a shell that first writes its pid, then becomes the command."""
    script = f"echo $$ > {shlex.quote(str(pidfile))} && exec {shlex.join(command)}"
    return ["/bin/sh", "-c", script]


def quoted(command: Sequence[str]) -> str:
    """The command as the one quoted argument ``agent tools ... stdio`` takes."""
    return shlex.join(command)


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` and no process of its group is left (reaped or never a
    zombie of ours: the SDK waits for its server's exit)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        return False
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False
