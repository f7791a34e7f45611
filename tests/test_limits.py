"""Every input limit: over it, a readable refusal and nothing stored; at it, accepted."""

import pytest

from bot.board import MAX_DESCRIPTION_LENGTH, MAX_NOTE_LENGTH, MAX_TITLE_LENGTH, Board
from bot.errors import InvalidInput
from bot.registry import AgentRegistry
from bot.root import Core
from bot.status import TaskStatus
from bot.task import Actor, Task
from bot.work import (
    MAX_ARTIFACT_CHARS,
    MAX_ARTIFACT_NAME,
    MAX_ARTIFACT_URI,
    MAX_ARTIFACTS_PER_TASK,
)
from store.repository import SqlStore

ALICE = "U_ALICE"
CODER = Actor.agent("coder")


async def stored(store: SqlStore) -> tuple[object, ...]:
    """Everything a refused call must leave as it was."""
    async with store.read() as reader:
        tasks = await reader.list_tasks()
        artifacts = [await reader.list_artifacts(t.id) for t in tasks]
        events = [await reader.list_events(t.id) for t in tasks]
    return tasks, artifacts, events, await store.list_outbox()


@pytest.fixture
async def assigned(board: Board, registry: AgentRegistry) -> Task:
    await registry.add_agent("coder")
    task = await board.create_task("C1", "Limits", Actor.user(ALICE))
    return await board.assign_task(task.ref, "coder", ALICE)


@pytest.mark.parametrize(
    ("title", "description", "says"),
    [
        ("t" * (MAX_TITLE_LENGTH + 1), "", "A title can be at most 200 characters"),
        (
            "ok",
            "d" * (MAX_DESCRIPTION_LENGTH + 1),
            "A description can be at most 4,000 characters",
        ),
    ],
    ids=["title", "description"],
)
async def test_a_task_over_a_limit_is_refused_and_nothing_is_stored(
    board: Board, store: SqlStore, title: str, description: str, says: str
) -> None:
    before = await stored(store)
    with pytest.raises(InvalidInput, match=says):
        await board.create_task("C1", title, Actor.user(ALICE), description=description)
    assert await stored(store) == before


async def test_a_task_at_the_limits_is_accepted(board: Board) -> None:
    task = await board.create_task(
        "C1", "t" * MAX_TITLE_LENGTH, Actor.user(ALICE), description="d" * MAX_DESCRIPTION_LENGTH
    )
    assert (len(task.title), len(task.description)) == (MAX_TITLE_LENGTH, MAX_DESCRIPTION_LENGTH)


async def test_a_status_note_over_its_limit_is_refused(
    board: Board, store: SqlStore, assigned: Task
) -> None:
    before = await stored(store)
    with pytest.raises(InvalidInput, match="A note can be at most 1,000 characters"):
        await board.update_task_status(
            assigned.ref, TaskStatus.BLOCKED, Actor.user(ALICE), note="n" * (MAX_NOTE_LENGTH + 1)
        )
    assert await stored(store) == before
    moved = await board.update_task_status(
        assigned.ref, TaskStatus.BLOCKED, Actor.user(ALICE), note="n" * MAX_NOTE_LENGTH
    )
    assert moved.status == TaskStatus.BLOCKED


LONG_NAME = "n" * (MAX_ARTIFACT_NAME + 1)


@pytest.mark.parametrize(
    ("name", "kind", "uri", "content", "says"),
    [
        (LONG_NAME, "log", None, "c", "name and kind can be at most 200 characters"),
        ("n", LONG_NAME, None, "c", "name and kind can be at most 200 characters"),
        ("n", "link", "javascript:alert(1)", None, "must be an http\\(s\\) URL"),
        ("n", "link", "ftp://files.example/x", None, "must be an http\\(s\\) URL"),
        ("n", "link", "https://x.example/" + "a" * MAX_ARTIFACT_URI, None, "at most 2,000"),
        ("n", "log", None, "é" * (MAX_ARTIFACT_CHARS // 2 + 1), "at most 200,000 bytes"),
    ],
    ids=["name", "kind", "javascript-uri", "ftp-uri", "long-uri", "content-bytes"],
)
async def test_an_artifact_over_a_limit_is_refused_and_nothing_is_stored(
    core: Core,
    store: SqlStore,
    assigned: Task,
    name: str,
    kind: str,
    uri: str | None,
    content: str | None,
    says: str,
) -> None:
    before = await stored(store)
    with pytest.raises(InvalidInput, match=says):
        await core.work.add_artifact(
            assigned.ref, "coder", name, kind, uri=uri, content=content, epoch=assigned.lease_epoch
        )
    assert await stored(store) == before


async def test_a_task_keeps_at_most_a_hundred_artifacts(
    core: Core, store: SqlStore, assigned: Task
) -> None:
    for n in range(MAX_ARTIFACTS_PER_TASK):
        await core.work.add_artifact(assigned.ref, "coder", f"a{n}", "log", content="x")
    before = await stored(store)
    with pytest.raises(InvalidInput, match="already has 100 artifacts"):
        await core.work.add_artifact(assigned.ref, "coder", "one more", "log", content="x")
    assert await stored(store) == before
    async with store.read() as reader:
        assert len(await reader.list_artifacts(assigned.id)) == MAX_ARTIFACTS_PER_TASK


async def test_nul_characters_never_reach_the_database(
    core: Core, board: Board, assigned: Task
) -> None:
    task = await board.create_task("C1", "a\x00b", Actor.user(ALICE), description="c\x00d")
    assert (task.title, task.description) == ("ab", "cd")
    await core.work.post_update(assigned.ref, "coder", "e\x00f", assigned.lease_epoch)
    artifact = await core.work.add_artifact(
        assigned.ref, "coder", "n\x00", "log", content="g\x00h", epoch=assigned.lease_epoch
    )
    assert (artifact.name, artifact.content) == ("n", "gh")
