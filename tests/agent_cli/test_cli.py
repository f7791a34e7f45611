"""``threadwork worker``'s command line, run as the console script: what it refuses before it
starts, with one line on stderr and exit code 2, never echoing the token."""

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from tests.processes import THREADWORK

TOKEN = "tw-secret-token-never-printed"
TIMEOUT_S = 30


async def worker(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    base = {"PATH": os.environ.get("PATH", os.defpath), "HOME": "/nonexistent"}
    process = await asyncio.create_subprocess_exec(
        str(THREADWORK),
        "worker",
        *args,
        env=base | (env or {}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT_S):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, (out + err).decode()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workdir", "{tmp}", "--", "true"], "give the agent's token"),
        (["--token", TOKEN, "--workdir", "{tmp}", "--repo", "{tmp}", "--", "true"], "--repo"),
        (["--token", TOKEN, "--repo", "{tmp}", "--", "true"], "is not a git repository"),
        (["--token", TOKEN, "--workdir", "{tmp}", "--preset", "cursor"], "no preset 'cursor'"),
    ],
    ids=["no-token", "repo-and-workdir", "not-a-repo", "unknown-preset"],
)
async def test_a_worker_that_cannot_work_says_why_and_exits_2(
    tmp_path: Path, args: list[str], says: str
) -> None:
    code, output = await worker(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert code == 2, output
    assert output.startswith("error: ")
    assert says in output
    assert TOKEN not in output


async def test_the_token_may_come_from_the_environment(tmp_path: Path) -> None:
    init = ["git", "init", "-q", str(tmp_path)]
    await asyncio.to_thread(subprocess.run, init, check=True)
    code, output = await worker(
        "--repo", str(tmp_path), "--", "true", env={"THREADWORK_MCP_TOKEN": TOKEN}
    )
    assert code == 2  # a repository with no commit yet: refused after the token was accepted
    assert "is not a git repository" in output
    assert TOKEN not in output
