"""Which running attempts a ``list_my_tasks`` answer stops, decided on a fabricated answer."""

from pathlib import Path

from bot.status import TaskStatus
from bot.task import TaskRef
from channels.agent_cli.attempt import Attempt, Command
from channels.agent_cli.briefs import Held
from channels.agent_cli.link import Link
from channels.agent_cli.worker import moved_on
from channels.agent_cli.workspaces import TaskDirs

A, B, C = TaskRef("CCHK", 1), TaskRef("CCHK", 2), TaskRef("CCHK", 3)


def attempt(ref: TaskRef, epoch: int, tmp_path: Path) -> Attempt:
    command = Command(("true",), {}, "true")
    return Attempt(ref, epoch, Link("http://localhost:9/mcp", "tw-t"), TaskDirs(tmp_path), command)


async def test_only_a_task_gone_or_held_at_a_newer_epoch_stops_its_attempt(tmp_path: Path) -> None:
    same, older_answer, newer_answer, gone = (
        attempt(A, 2, tmp_path),
        attempt(B, 5, tmp_path),  # started at epoch 5 while the answer still said 4
        attempt(C, 1, tmp_path),
        attempt(TaskRef("CCHK", 4), 1, tmp_path),
    )
    running = {a.ref: a for a in (same, older_answer, newer_answer, gone)}
    answer = {
        A: Held(A, TaskStatus.IN_PROGRESS, 2),
        B: Held(B, TaskStatus.IN_PROGRESS, 4),
        C: Held(C, TaskStatus.IN_PROGRESS, 2),
    }

    assert moved_on(running, answer) == [newer_answer, gone]
