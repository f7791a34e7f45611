"""Who may see and change a task, cell by cell, through signed requests.

Every ``/task`` subcommand and every card control, by each kind of person, on a task in a
public and in a private channel. Each cell is allowed or refused as the README's table says; a
refused cell changes nothing and never shows the task's title.
"""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from bot.status import TaskStatus
from bot.task import Task
from tests.conftest import FakeClock
from tests.slack.conftest import ADMIN, AGENT_USER, Harness, start_service
from tests.slack.standin import SlackStandIn

OWNER = "UOWNER01"  # created the task and assigned it
MEMBER = "UMEMBER1"  # in the channel, nothing to do with the task
OUTSIDER = "UOUTSID1"  # not in the channel
WORKSPACE_ADMIN = "UWSADMN1"  # a workspace admin (users.info), not in THREADWORK_ADMINS
PUBLIC, PRIVATE = "CPUBLIC1", "GPRIVAT1"
TITLE = "Rotate the vault password"

#: Who is allowed what, as the README's table says: reading and changing need membership of
#: the channel; closing (done, cancel, reassigning away from the agent) needs ownership too.
READ, CHANGE, CLOSE = "read", "change", "close"
ALLOWED = {
    "owner": {READ, CHANGE, CLOSE},
    "member": {READ, CHANGE},
    "outsider": set(),
    "admin": {READ, CHANGE, CLOSE},
    "workspace-admin": {READ, CHANGE},
    "workspace-admin-trusted": {READ, CHANGE, CLOSE},
}
USERS = {
    "owner": OWNER,
    "member": MEMBER,
    "outsider": OUTSIDER,
    "admin": ADMIN,
    "workspace-admin": WORKSPACE_ADMIN,
    "workspace-admin-trusted": WORKSPACE_ADMIN,
}


@dataclass(frozen=True)
class Cell:
    """One action: what it needs, how to do it, and what the task looks like after it worked."""

    name: str
    needs: str
    #: The task starts done (for reopen) instead of assigned.
    done_first: bool = False


COMMANDS = [
    Cell("show", READ),
    Cell("log", READ),
    Cell("list", READ),
    Cell("status in_progress", CHANGE),
    Cell("reopen", CHANGE, done_first=True),
    Cell("status done", CLOSE),
    Cell("cancel", CLOSE),
    Cell("assign reviewer", CLOSE),
]
CONTROLS = [
    Cell("task_status_in_progress", CHANGE),
    Cell("task_status_reopen", CHANGE, done_first=True),
    Cell("task_status_done", CLOSE),
    Cell("task_cancel", CLOSE),
    Cell("task_assign", CLOSE),
]


@pytest.fixture(params=["public", "private"])
def channel(request: pytest.FixtureRequest) -> str:
    return PUBLIC if request.param == "public" else PRIVATE


@pytest.fixture(params=list(USERS))
def role(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def world(
    sqlite_url: str, clock: FakeClock, role: str, channel: str
) -> AsyncIterator[Harness]:
    """Both channels have the same members (all but the outsider); the private one is a
    channel the bot was invited to, so Slack lists its members to the bot alone."""
    insiders = {OWNER, MEMBER, ADMIN, WORKSPACE_ADMIN, AGENT_USER}
    standin = SlackStandIn(
        users={WORKSPACE_ADMIN: {"is_admin": True}, ADMIN: {"is_admin": False}},
        members={PUBLIC: set(insiders), PRIVATE: set(insiders)},
    )
    await standin.start()
    trusted = role == "workspace-admin-trusted"
    try:
        async for harness in start_service(sqlite_url, standin, clock, workspace_admins=trusted):
            await harness.core.registry.add_agent("coder", slack_user_id=AGENT_USER)
            await harness.core.registry.add_agent("reviewer")
            yield harness
    finally:
        await standin.close()


async def seeded(world: Harness, channel: str, done_first: bool) -> Task:
    assert "Created" in await world.command(f"new {TITLE}", user=OWNER, channel=channel)
    assert "Assigned" in await world.command("assign 1 coder", user=OWNER, channel=channel)
    if done_first:
        assert "done" in await world.command("status 1 done", user=OWNER, channel=channel)
    await world.deliver()
    return await world.task(1, channel)


async def snapshot(world: Harness, task: Task) -> tuple[Task, int]:
    async with world.core.store.read() as reader:
        current = await reader.get_task(task.ref)
        events = await reader.list_events(task.id)
    assert current is not None
    return current, len(events)


def worked(cell: str, before: Task, after: Task) -> bool:
    """Whether the change ``cell`` names happened."""
    expected = {
        "in_progress": after.status == TaskStatus.IN_PROGRESS,
        "reopen": after.status == TaskStatus.TODO and before.status == TaskStatus.DONE,
        "done": after.status == TaskStatus.DONE,
        "cancel": after.status == TaskStatus.CANCELED,
        "assign": after.assignee == "reviewer",
    }
    return next(ok for key, ok in expected.items() if key in cell)


@pytest.mark.parametrize("cell", COMMANDS, ids=[c.name for c in COMMANDS])
async def test_a_task_command_is_allowed_exactly_as_the_table_says(
    world: Harness, role: str, channel: str, cell: Cell
) -> None:
    task = await seeded(world, channel, cell.done_first)
    before = await snapshot(world, task)
    allowed = cell.needs in ALLOWED[role]
    number = "" if cell.name == "list" else " 1"
    words = cell.name.split(" ", 1)
    text = f"{words[0]}{number}" + (f" {words[1]}" if len(words) > 1 else "")
    reply = await world.command(text, user=USERS[role], channel=channel)
    if cell.needs == READ:
        assert (TITLE in reply) is allowed, reply
        return
    after = await snapshot(world, task)
    if allowed:
        assert worked(cell.name, task, after[0]), reply
        return
    assert after == before, reply
    assert TITLE not in reply
    if READ not in ALLOWED[role]:
        assert f"There is no task {task.ref}." in reply
    else:
        assert "Only the creator of" in reply


def control(cell: Cell, task: Task) -> dict[str, Any]:
    if cell.name == "task_assign":
        return {
            "action_id": "task_assign",
            "type": "static_select",
            "selected_option": {"value": f"{task.ref} reviewer"},
        }
    return {"action_id": cell.name, "type": "button", "value": str(task.ref)}


def clicked(user: str, channel: str, action: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user},
        "team": {"id": "T1"},
        "channel": {"id": channel},
        "container": {"type": "message", "channel_id": channel},
        "trigger_id": "trigger-9",
        "actions": [action],
    }


@pytest.mark.parametrize("cell", CONTROLS, ids=[c.name for c in CONTROLS])
async def test_a_card_control_is_allowed_exactly_as_the_table_says(
    world: Harness, role: str, channel: str, cell: Cell
) -> None:
    task = await seeded(world, channel, cell.done_first)
    before = await snapshot(world, task)
    response = await world.interact(clicked(USERS[role], channel, control(cell, task)))
    assert response.status == 200
    after = await snapshot(world, task)
    told = [c.args["text"] for c in world.standin.calls_to("chat.postEphemeral")]
    if cell.needs in ALLOWED[role]:
        assert worked(cell.name, task, after[0]), told
        assert told == []
        return
    assert after == before
    assert len(told) == 1
    assert TITLE not in told[0]


@pytest.mark.parametrize("role", ["owner"])
@pytest.mark.parametrize("cell", CONTROLS, ids=[c.name for c in CONTROLS])
async def test_a_card_control_sent_from_another_channel_is_refused(
    world: Harness, channel: str, cell: Cell
) -> None:
    task = await seeded(world, channel, cell.done_first)
    before = await snapshot(world, task)
    elsewhere = PRIVATE if channel == PUBLIC else PUBLIC
    await world.interact(clicked(OWNER, elsewhere, control(cell, task)))
    assert await snapshot(world, task) == before
    [told] = [c.args["text"] for c in world.standin.calls_to("chat.postEphemeral")]
    assert f"There is no task {task.ref}." in told


@pytest.mark.parametrize("role", ["outsider"])
async def test_joining_and_leaving_the_channel_change_what_a_person_sees_at_once(
    world: Harness, channel: str
) -> None:
    await seeded(world, channel, done_first=False)
    assert "There is no task" in await world.command("show 1", user=OUTSIDER, channel=channel)
    world.standin.join(OUTSIDER, channel)
    joined = {"type": "member_joined_channel", "user": OUTSIDER, "channel": channel}
    assert await world.event(joined) == 200
    assert TITLE in await world.command("show 1", user=OUTSIDER, channel=channel)
    world.standin.members[channel].discard(OUTSIDER)
    left = {"type": "member_left_channel", "user": OUTSIDER, "channel": channel}
    assert await world.event(left) == 200
    reply = await world.command("show 1", user=OUTSIDER, channel=channel)
    assert TITLE not in reply
    assert "There is no task" in reply


@pytest.mark.parametrize("role", ["owner"])
async def test_an_agent_acting_through_its_slack_user_is_not_a_person(
    world: Harness, channel: str
) -> None:
    task = await seeded(world, channel, done_first=False)
    before = await snapshot(world, task)
    for text in ("status 1 blocked", "status 1 done", "cancel 1", "assign 1 reviewer"):
        reply = await world.command(text, user=AGENT_USER, channel=channel)
        assert "Agents change tasks through their tools" in reply, reply
    assert "Agents change tasks" in await world.command(
        "new Self-made", user=AGENT_USER, channel=channel
    )
    assert await snapshot(world, task) == before
    async with world.core.store.read() as reader:
        assert len(await reader.list_tasks(channel_id=channel)) == 1


@pytest.mark.parametrize("role", ["member"])
async def test_a_full_ref_from_another_channel_is_answered_as_a_missing_task(
    world: Harness, channel: str
) -> None:
    task = await seeded(world, channel, done_first=False)
    elsewhere = PUBLIC if channel == PRIVATE else PRIVATE
    missing = await world.command(f"show {channel}#99", user=OUTSIDER, channel=elsewhere)
    hidden = await world.command(f"show {task.ref}", user=OUTSIDER, channel=elsewhere)
    assert hidden == missing.replace(f"{channel}#99", str(task.ref))
    assert TITLE in await world.command(f"show {task.ref}", user=MEMBER, channel=elsewhere)


@pytest.mark.parametrize("role", ["member"])
async def test_a_member_creates_tasks_and_closes_them_once_the_channel_lets_anyone(
    world: Harness, channel: str
) -> None:
    await seeded(world, channel, done_first=False)
    assert "Created" in await world.command("new Mine too", user=MEMBER, channel=channel)
    assert "Created" not in await world.command("new Not mine", user=OUTSIDER, channel=channel)
    assert "Only the creator of" in await world.command("cancel 1", user=MEMBER, channel=channel)
    opened = await world.command(
        "policy closers anyone", command="/task-admin", user=ADMIN, channel=channel
    )
    assert "any member of the channel may cancel" in opened
    assert "is canceled" in await world.command("cancel 1", user=MEMBER, channel=channel)
    assert (await world.task(1, channel)).status == TaskStatus.CANCELED


@pytest.mark.parametrize("role", ["member"])
async def test_a_creator_who_did_not_assign_still_may_close_and_so_may_the_assigner(
    world: Harness, channel: str
) -> None:
    assert "Created" in await world.command(f"new {TITLE}", user=MEMBER, channel=channel)
    assert "Assigned" in await world.command("assign 1 coder", user=OWNER, channel=channel)
    assert "is now `done`" in await world.command("status 1 done", user=MEMBER, channel=channel)
    assert "reopened" in await world.command("reopen 1", user=OWNER, channel=channel)
    assert "is canceled" in await world.command("cancel 1", user=OWNER, channel=channel)


@pytest.mark.parametrize("role", ["member"])
async def test_app_home_never_shows_a_task_of_a_channel_the_viewer_has_left(
    world: Harness, channel: str
) -> None:
    assert "Created" in await world.command(f"new {TITLE}", user=MEMBER, channel=channel)
    world.standin.channels_of[MEMBER] = [channel]
    home = {"type": "app_home_opened", "user": MEMBER, "tab": "home", "channel": "D1"}
    assert await world.event(home) == 200
    shown = json.dumps(world.standin.calls_to("views.publish")[-1].args["view"])
    assert TITLE in shown
    world.standin.members[channel].discard(MEMBER)
    world.standin.channels_of[MEMBER] = []
    left = {"type": "member_left_channel", "user": MEMBER, "channel": channel}
    assert await world.event(left) == 200
    assert await world.event(home) == 200
    shown = json.dumps(world.standin.calls_to("views.publish")[-1].args["view"])
    assert TITLE not in shown  # they created it, but they have left its channel
