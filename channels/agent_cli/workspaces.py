"""Where an attempt's command runs: a git worktree on the task's branch, or a plain directory.

With ``--repo``, each task gets a worktree of that repository on branch
``threadwork/<channel>-<number>``, kept inside the repository's git directory (so neither the
checkout nor its tools ever see it). A later attempt of the same task reuses it as it was left,
uncommitted changes included, so work carries over. With ``--workdir``, each task gets a
directory ``<channel>-<number>`` under it, reused the same way.
"""

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bot.task import TaskRef

#: Under the repository's git directory, where the tasks' worktrees live.
WORKTREES = "threadwork-worktrees"


class WorkspaceError(Exception):
    """The working directory could not be prepared; the message says what git said."""


@dataclass(frozen=True)
class Workspace:
    """An attempt's working directory, and its branch when it is a worktree."""

    path: Path
    branch: str | None = None


class Workspaces(Protocol):
    """Prepares a task's working directory, and reads where its work stands."""

    async def prepare(self, ref: TaskRef) -> Workspace: ...

    async def head(self, workspace: Workspace) -> str | None:
        """The commit the workspace's branch is at (None outside git)."""
        ...


def task_slug(ref: TaskRef) -> str:
    """``C123-7``: the task's name in branches and directories."""
    return f"{ref.channel_id}-{ref.number}"


def branch_for(ref: TaskRef) -> str:
    return f"threadwork/{task_slug(ref)}"


class TaskDirs:
    """A directory per task under ``root``."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def prepare(self, ref: TaskRef) -> Workspace:
        path = self._root / task_slug(ref)
        path.mkdir(parents=True, exist_ok=True)
        return Workspace(path)

    async def head(self, workspace: Workspace) -> str | None:
        return None


class GitWorktrees:
    """A worktree per task of the repository at ``repo``; one git change at a time."""

    def __init__(self, repo: Path) -> None:
        self._repo = repo
        self._lock = asyncio.Lock()

    async def check(self) -> None:
        """Raises WorkspaceError unless ``repo`` is a git repository with a commit."""
        await git(self._repo, "rev-parse", "--verify", "HEAD^{commit}")

    async def prepare(self, ref: TaskRef) -> Workspace:
        branch = branch_for(ref)
        async with self._lock:
            common = Path(
                await git(self._repo, "rev-parse", "--path-format=absolute", "--git-common-dir")
            )
            path = common / WORKTREES / task_slug(ref)
            await git(self._repo, "worktree", "prune")  # forgets worktrees deleted by hand
            if not await self._registered(path):
                if await self._branch_exists(branch):
                    await git(self._repo, "worktree", "add", str(path), branch)
                else:
                    await git(self._repo, "worktree", "add", "-b", branch, str(path), "HEAD")
        return Workspace(path, branch)

    async def head(self, workspace: Workspace) -> str | None:
        return await git(workspace.path, "rev-parse", "HEAD")

    async def _registered(self, path: Path) -> bool:
        listing = await git(self._repo, "worktree", "list", "--porcelain")
        worktrees = {line.removeprefix("worktree ") for line in listing.splitlines()}
        return str(path) in worktrees

    async def _branch_exists(self, branch: str) -> bool:
        try:
            await git(self._repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
        except WorkspaceError:
            return False
        return True


async def git(cwd: Path, *args: str) -> str:
    """Runs ``git args`` in ``cwd``; its stdout, stripped. Raises WorkspaceError on failure."""
    process = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        said = err.decode(errors="replace").strip() or f"exit {process.returncode}"
        raise WorkspaceError(f"git {' '.join(args[:2])} failed: {said}")
    return out.decode().strip()
