"""``/task`` and ``/task-admin`` end to end: signed slash commands into the running service.

Every misuse is answered with what was wrong and the right usage, and leaves the database as it
was; every success says what it did, and the card and the outbox follow.
"""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from bot.agents import Agent, AgentKind
from bot.outbox import OutboxKind, OutboxRow, OutboxState
from bot.policy import ChannelPolicy
from bot.status import TaskStatus
from bot.task import EventKind, Task, TaskEvent
from channels.slack.admin_command import AGENT_KEY_VIEW
from channels.slack.admin_command import USAGE as ADMIN_COMMAND_USAGE
from channels.slack.replies import ADMIN_USAGE, TASK_USAGE
from channels.slack.task_command import USAGE
from tests.conftest import FakeClock
from tests.slack.conftest import ADMIN, AGENT_USER, ALICE, CHANNEL, Harness, start_service
from tests.slack.standin import SlackStandIn

SECRET_KEY = "sk-secret-xyz"
NEWCOMER = "UNEW0001"


@dataclass(frozen=True)
class Snapshot:
    """Everything a command could change: tasks, their events, the outbox, agents, policies."""

    tasks: list[Task]
    events: dict[int, list[TaskEvent]]
    outbox: list[OutboxRow]
    agents: list[Agent]
    policies: list[ChannelPolicy]


async def snapshot(service: Harness) -> Snapshot:
    async with service.core.store.read() as reader:
        tasks = await reader.list_tasks()
        events = {task.id: await reader.list_events(task.id) for task in tasks}
        agents = await reader.list_agents()
        policies = await reader.list_channel_policies()
    return Snapshot(tasks, events, await service.core.store.list_outbox(), agents, policies)


async def events_of(service: Harness, number: int) -> list[TaskEvent]:
    task = await service.task(number)
    async with service.core.store.read() as reader:
        return await reader.list_events(task.id)


def card_status(service: Harness) -> str:
    """The status field of the latest card update sent to Slack."""
    update = service.standin.calls_to("chat.update")[-1]
    return str(update.args["blocks"][1]["fields"][0]["text"])


async def task_admin(service: Harness, text: str, user: str = ADMIN) -> str:
    return await service.command(text, command="/task-admin", user=user)


@pytest.fixture
async def board(service: Harness) -> Harness:
    """A channel with #1 todo and assigned to coder, #2 done and #3 blocked; all delivered."""
    assert "Created *C1#1*" in await service.command("new Fix the login bug")
    assert "Created *C1#2*" in await service.command("new Write the changelog")
    assert "Created *C1#3*" in await service.command("new Rotate the signing keys")
    assert "Assigned *C1#1*" in await service.command("assign 1 coder")
    assert "now `done`" in await service.command("status 2 done")
    assert "now `blocked`" in await service.command("status 3 blocked")
    await service.deliver()
    return service


# /task: misuse ---------------------------------------------------------------------------------


def misuse(text: str, problem: str, sub: str, case: str) -> Any:
    """One row of the matrix: the command, the problem it must name, the usage it must show."""
    return pytest.param(text, problem, f"Usage: `{USAGE[sub]}`", id=case)


TASK_MISUSES = [
    misuse("new", "A task needs a title.", "new", "new-without-title"),
    misuse("new    ", "A task needs a title.", "new", "new-with-a-blank-title"),
    misuse("assign", "`assign` needs a task number and an agent.", "assign", "assign-bare"),
    misuse("assign 1", "`assign` needs a task number and an agent.", "assign", "assign-no-agent"),
    misuse(
        "assign 1 coder now",
        "`assign` needs a task number and an agent.",
        "assign",
        "assign-extra-word",
    ),
    misuse("assign 99 coder", "There is no task C1#99.", "assign", "assign-unknown-task"),
    misuse(
        "assign 1 nobody",
        "There is no agent named `nobody`; `/task-admin agent list` shows them.",
        "assign",
        "assign-unknown-agent",
    ),
    misuse(
        "assign 1 <@UNOBODY1>",
        "<@UNOBODY1> is not registered as an agent; an admin can add it with "
        "`/task-admin agent add <@UNOBODY1>`.",
        "assign",
        "assign-unregistered-mention",
    ),
    misuse(
        "assign x coder",
        "`x` is not a task number; write it as 7 or #7.",
        "assign",
        "assign-malformed-number",
    ),
    misuse(
        "assign 2 coder",
        "C1#2 is done; reopen it before assigning it.",
        "assign",
        "assign-a-done-task",
    ),
    misuse('assign "1 coder', "A quote is not closed.", "assign", "assign-with-an-unclosed-quote"),
    misuse("status", "`status` needs a task number and a status.", "status", "status-bare"),
    misuse("status 1", "`status` needs a task number and a status.", "status", "status-missing"),
    misuse(
        "status 1 bogus",
        "`bogus` is not a status. Use one of: todo, in_progress, in_review, done, blocked, "
        "canceled.",
        "status",
        "status-bogus",
    ),
    misuse("status 99 done", "There is no task C1#99.", "status", "status-unknown-task"),
    misuse(
        "status x done",
        "`x` is not a task number; write it as 7 or #7.",
        "status",
        "status-malformed-number",
    ),
    misuse(
        "status 2 in_progress",
        "The task is done, which is final; reopen it first to move it to in_progress.",
        "status",
        "status-out-of-done",
    ),
    misuse(
        "status 3 in_review",
        "A task that is blocked cannot move to in_review; it can move to: "
        "canceled, in_progress, todo.",
        "status",
        "status-blocked-to-in-review",
    ),
    misuse("status 1 todo", "The task is already todo.", "status", "status-to-itself"),
    misuse("list bogus", "`bogus` is not a status.", "list", "list-bogus-status"),
    misuse("list todo done", "`list` takes at most one status.", "list", "list-two-statuses"),
    misuse(
        "reopen 1",
        "Only done or canceled tasks can be reopened; this one is todo.",
        "reopen",
        "reopen-a-todo-task",
    ),
    misuse(
        "cancel 2",
        "The task is done, which is final; reopen it first to move it to canceled.",
        "cancel",
        "cancel-a-done-task",
    ),
    *[
        case
        for sub in ("show", "log", "cancel", "reopen")
        for case in (
            misuse(sub, f"`{sub}` takes exactly one task number.", sub, f"{sub}-without-number"),
            misuse(
                f"{sub} 1 2", f"`{sub}` takes exactly one task number.", sub, f"{sub}-two-numbers"
            ),
            misuse(f"{sub} 99", "There is no task C1#99.", sub, f"{sub}-unknown-task"),
            misuse(f"{sub} #99", "There is no task C1#99.", sub, f"{sub}-unknown-hash-number"),
            misuse(
                f"{sub} seven",
                "`seven` is not a task number; write it as 7 or #7.",
                sub,
                f"{sub}-malformed-number",
            ),
            misuse(f"{sub} '1", "A quote is not closed.", sub, f"{sub}-unclosed-quote"),
        )
    ],
]


@pytest.mark.parametrize(("text", "problem", "usage"), TASK_MISUSES)
async def test_a_task_misuse_says_what_was_wrong_and_how_and_changes_nothing(
    board: Harness, text: str, problem: str, usage: str
) -> None:
    before = await snapshot(board)
    calls = len(board.standin.calls)

    reply = await board.command(text)

    assert reply.startswith(":warning: ")
    assert problem in reply
    assert reply.endswith(usage)
    assert await snapshot(board) == before
    await board.deliver()
    assert board.standin.calls[calls:] == []


@pytest.mark.parametrize("text", ["frobnicate 1", "FROBNICATE", "tasks"])
async def test_an_unknown_subcommand_is_named_and_answered_with_the_usage(
    board: Harness, text: str
) -> None:
    before = await snapshot(board)
    reply = await board.command(text)
    sub = text.split()[0].lower()
    assert reply == f":warning: `{sub}` is not a `/task` command.\n{TASK_USAGE}"
    assert await snapshot(board) == before


@pytest.mark.parametrize("text", ["", "help", "HELP"])
async def test_help_and_an_empty_task_command_show_the_usage(board: Harness, text: str) -> None:
    before = await snapshot(board)
    assert await board.command(text) == TASK_USAGE
    assert await snapshot(board) == before


def test_the_help_names_every_subcommand() -> None:
    assert all(f"`/task {sub} " in TASK_USAGE for sub in USAGE)


# /task: happy paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["1", "#1", "C1#1"])
async def test_status_moves_the_task_and_the_card_follows(board: Harness, ref: str) -> None:
    reply = await board.command(f"status {ref} in_progress")

    assert reply == "*C1#1* is now `in_progress`."
    task = await board.task(1)
    assert (task.status, task.claimed_by) == (TaskStatus.IN_PROGRESS, "coder")
    [*_, moved] = await events_of(board, 1)
    assert (moved.kind, moved.data) == (
        EventKind.STATUS_CHANGED,
        {"from": "todo", "to": "in_progress", "note": None},
    )
    [pending] = [
        r for r in await board.core.store.list_outbox(task.id) if r.state != OutboxState.DELIVERED
    ]
    assert pending.kind == OutboxKind.CARD_UPDATE
    await board.deliver()
    assert "`in_progress`" in card_status(board)
    assert board.standin.calls_to("chat.update")[-1].args["ts"] == task.card_ts


async def test_status_keeps_the_words_after_the_status_as_a_note(board: Harness) -> None:
    reply = await board.command("status 1 in-progress looking at the session cookie")

    assert reply == "*C1#1* is now `in_progress`."
    [*_, moved] = await events_of(board, 1)
    assert moved.data["note"] == "looking at the session cookie"
    assert "— looking at the session cookie" in await board.command("log 1")


async def test_a_note_may_contain_an_apostrophe(board: Harness) -> None:
    """Free text in a note is ordinary English; "can't" is not an unclosed quote."""
    reply = await board.command("status 1 blocked can't reach the staging API")

    assert reply == "*C1#1* is now `blocked`."
    [*_, blocked] = await events_of(board, 1)
    assert blocked.data["note"] == "can't reach the staging API"


async def test_show_tells_the_status_assignee_lease_and_latest_messages(board: Harness) -> None:
    task = await board.task(1)
    assert task.thread_ts is not None
    await board.thread_message(ALICE, "the cookie expires too early", task.thread_ts)
    await board.thread_message(AGENT_USER, "looking at the session cookie", task.thread_ts)

    shown = await board.command("show #1")

    lines = shown.splitlines()
    assert lines[0] == "*C1#1* · Fix the login bug"
    assert lines[1] == (
        f":white_circle: `todo` · <@{AGENT_USER}> · attempt 1/2 · lease live, last progress 0s ago"
    )
    assert f"Assigned by <@{ALICE}>" in lines
    assert "*Latest in the thread*" in lines
    assert f"• <@{ALICE}>" in shown
    assert "the cookie expires too early" in shown
    assert f"• <@{AGENT_USER}>" in shown
    assert "looking at the session cookie" in shown

    board.clock.advance(601)
    assert "lease *lapsed*, last progress 10m ago" in await board.command("show 1")


async def test_show_quotes_thread_messages_as_slack_wrote_them_without_escaping_twice(
    board: Harness,
) -> None:
    """Slack delivers message text with ``&``, ``<`` and ``>`` already escaped as entities."""
    task = await board.task(1)
    assert task.thread_ts is not None
    await board.thread_message(AGENT_USER, "R&amp;D says the TTL is &lt; 8h", task.thread_ts)

    shown = await board.command("show 1")

    assert f"• <@{AGENT_USER}> 0s ago: R&amp;D says the TTL is &lt; 8h" in shown


async def test_show_of_an_unassigned_task_says_so(board: Harness) -> None:
    shown = await board.command("show 2")
    assert shown.splitlines() == [
        "*C1#2* · Write the changelog",
        ":white_check_mark: `done` · unassigned · no lease",
    ]


async def test_log_explains_the_history_of_a_task(board: Harness) -> None:
    board.clock.advance(601)
    report = await board.core.reconciler.reconcile_stale_tasks()
    assert [str(r) for r in report.redispatched] == ["C1#1"]
    await board.command("status 1 blocked waiting for credentials")

    log = await board.command("log 1")

    lines = log.splitlines()
    assert lines[0] == "History of *C1#1* · Fix the login bug"
    sentences = [line.split(" — ", 1)[1] for line in lines[1:]]
    assert sentences == [
        f"<@{ALICE}> created the task.",
        f"<@{ALICE}> assigned it to <@{AGENT_USER}>.",
        f"A directive went to <@{AGENT_USER}>: attempt 1, lease epoch 1.",
        f"The lease lapsed (no progress for 600s; lease lapsed); re-dispatched to <@{AGENT_USER}>, "
        "attempt 2/2.",
        f"<@{ALICE}> marked it blocked: waiting for credentials.",
    ]
    assert all(line.startswith("• <!date^") for line in lines[1:])


async def test_list_shows_the_channels_tasks_and_filters_by_status(board: Harness) -> None:
    everything = await board.command("list")
    assert everything.splitlines()[0] == "Tasks in this channel:"
    assert [line.split(" · ")[0] for line in everything.splitlines()[1:]] == [
        ":white_circle: *C1#1*",
        ":white_check_mark: *C1#2*",
        ":red_circle: *C1#3*",
    ]
    assert f"*C1#1* · Fix the login bug · `todo` · <@{AGENT_USER}> · updated 0s ago" in everything

    todo = await board.command("list todo")
    assert todo.splitlines()[0] == "`todo` tasks in this channel:"
    assert len(todo.splitlines()) == 2
    assert "*C1#1*" in todo

    assert await board.command("list In-Progress") == "`in_progress` tasks in this channel: none."
    assert await board.command("list", channel="C2") == "Tasks in this channel: none."


async def test_cancel_clears_the_claim_and_the_card_offers_reopen(board: Harness) -> None:
    assert await board.command("cancel 1") == "*C1#1* is canceled."

    task = await board.task(1)
    assert (task.status, task.claimed_by, task.assignee) == (TaskStatus.CANCELED, None, "coder")
    await board.deliver()
    assert "`canceled`" in card_status(board)
    blocks = board.standin.calls_to("chat.update")[-1].args["blocks"]
    [controls] = [b for b in blocks if b["type"] == "actions"]
    assert [e["action_id"] for e in controls["elements"]] == ["task_status_reopen"]


async def test_reopen_redispatches_an_assigned_task_to_its_assignee(board: Harness) -> None:
    await board.command("cancel 1")
    await board.deliver()

    assert await board.command("reopen #1") == "*C1#1* is reopened and re-dispatched to `coder`."

    task = await board.task(1)
    assert (task.status, task.claimed_by, task.attempts, task.lease_epoch) == (
        TaskStatus.TODO,
        "coder",
        1,
        2,
    )
    await board.deliver()
    directive = board.standin.posts(CHANNEL)[-1]
    assert directive["thread_ts"] == task.thread_ts
    assert "Attempt 1/2" in directive["text"]
    assert "`todo`" in card_status(board)


async def test_reopen_of_an_unassigned_task_only_moves_it_to_todo(board: Harness) -> None:
    assert await board.command("reopen 2") == "*C1#2* is reopened."
    task = await board.task(2)
    assert (task.status, task.claimed_by) == (TaskStatus.TODO, None)
    await board.deliver()
    assert "`todo`" in card_status(board)


async def test_assign_by_mention_with_a_label_finds_the_agent(service: Harness) -> None:
    await service.command("new Fix the login bug")
    reply = await service.command(f"assign #1 <@{AGENT_USER}|coder>")
    assert reply == "Assigned *C1#1* to `coder` (attempt 1); a directive is going to its thread."


# /task-admin: who may use it -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"agent add <@{NEWCOMER}>",
        "agent remove coder",
        "agent disable coder",
        "agent enable coder",
        "agent key coder",
        "agent list",
        "policy ttl 60",
        "policy attempts 5",
        "reconcile",
        "stats",
        "help",
        "",
    ],
)
async def test_a_non_admin_is_refused_and_nothing_changes(board: Harness, text: str) -> None:
    board.clock.advance(601)
    before = await snapshot(board)

    reply = await task_admin(board, text, user=ALICE)

    assert reply.startswith(":no_entry: `/task-admin` is for threadwork admins")
    assert reply.endswith("Nothing was changed.")
    assert await snapshot(board) == before
    assert board.standin.calls_to("views.open") == []


async def test_a_user_slack_does_not_know_is_refused(service: Harness) -> None:
    reply = await task_admin(service, f"agent add <@{NEWCOMER}>", user="UGHOST01")
    assert reply.startswith(":no_entry:")
    assert [a.name for a in await service.core.registry.list_agents()] == ["coder"]


@pytest.fixture
async def trusting_workspace_admins(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock
) -> AsyncIterator[Harness]:
    """The service with THREADWORK_WORKSPACE_ADMINS=1."""
    async for harness in start_service(sqlite_url, standin, clock, workspace_admins=True):
        await harness.core.registry.add_agent("coder", slack_user_id="UCODER01")
        yield harness


@pytest.mark.parametrize("role", ["is_admin", "is_owner", "is_primary_owner"])
async def test_a_workspace_admin_found_through_users_info_is_allowed_when_trusted(
    trusting_workspace_admins: Harness, role: str
) -> None:
    service = trusting_workspace_admins
    service.standin.users["UBOSS001"] = {"is_admin": False, role: True}

    reply = await task_admin(service, "agent add reviewer", user="UBOSS001")

    assert reply == "Agent `reviewer` is registered as `external`."
    assert [c.args["user"] for c in service.standin.calls_to("users.info")] == ["UBOSS001"]


async def test_a_workspace_admin_is_not_a_threadwork_admin_by_default(service: Harness) -> None:
    service.standin.users["UBOSS001"] = {"is_admin": True, "is_owner": True}

    reply = await task_admin(service, "agent add reviewer", user="UBOSS001")

    assert reply.startswith(":no_entry:")
    assert service.standin.calls_to("users.info") == []
    assert [a.name for a in await service.core.registry.list_agents()] == ["coder"]


async def test_a_configured_admin_is_allowed_without_asking_slack(service: Harness) -> None:
    assert service.standin.users[ADMIN] == {"is_admin": False}
    assert (await task_admin(service, "agent list")).startswith("*Agents*")
    assert service.standin.calls_to("users.info") == []


# /task-admin: agents ---------------------------------------------------------------------------


async def test_agent_add_by_mention_registers_its_handle_user_and_display_name(
    service: Harness,
) -> None:
    reply = await task_admin(service, f'agent add <@{NEWCOMER}|newbie> display="New Bot"')

    assert reply == f"Agent `newbie` (<@{NEWCOMER}>) is registered as `external`."
    newbie = next(a for a in await service.core.registry.list_agents() if a.name == "newbie")
    assert (newbie.kind, newbie.display_name, newbie.slack_user_id, newbie.enabled) == (
        AgentKind.EXTERNAL,
        "New Bot",
        NEWCOMER,
        True,
    )
    await service.command("new Fix the login bug")
    assert "to `newbie`" in await service.command(f"assign 1 <@{NEWCOMER}>")


async def test_agent_add_by_a_bare_mention_takes_the_slack_handle(service: Harness) -> None:
    service.standin.users[NEWCOMER] = {"name": "helper"}

    reply = await task_admin(service, f"agent add <@{NEWCOMER}> external")

    assert reply == f"Agent `helper` (<@{NEWCOMER}>) is registered as `external`."


async def test_agent_add_by_a_bare_name_registers_an_agent_without_a_slack_user(
    service: Harness,
) -> None:
    reply = await task_admin(service, "agent add Reviewer")

    assert reply == "Agent `reviewer` is registered as `external`."
    reviewer = next(a for a in await service.core.registry.list_agents() if a.name == "reviewer")
    assert (reviewer.display_name, reviewer.slack_user_id) == ("reviewer", None)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("agent add x claude autonomy=sometimes", "autonomy must be `assume` or `wait`."),
        ("agent add x claude max_tokens=lots", "max_tokens must be a whole number"),
        ("agent add x openai", "An `openai` agent needs base_url="),
        (
            "agent add x model=claude-x",
            "model, system, max_tokens, autonomy and base_url are for built-in",
        ),
        (
            "agent add x robot",
            "`robot` is not an agent kind; use `external`, `claude` or `openai`.",
        ),
        ("agent add", "`agent add` needs one agent: a @mention of its Slack user or a name."),
        ("agent add a b c", "`agent add` needs one agent"),
        ('agent add "Bad Name"', "`Bad Name` is not a valid agent name"),
        (f"agent add <@{NEWCOMER}>", "Slack has no handle for"),
    ],
    ids=[
        "bad-autonomy",
        "bad-max-tokens",
        "openai-without-endpoint",
        "runtime-option-on-external",
        "unknown-kind",
        "no-agent",
        "too-many",
        "bad-name",
        "no-handle",
    ],
)
async def test_a_refused_agent_add_says_why_and_registers_nothing(
    service: Harness, text: str, problem: str
) -> None:
    before = await snapshot(service)

    reply = await task_admin(service, text)

    assert reply.startswith(":warning: ")
    assert problem in reply
    assert reply.endswith(f"Usage: `{ADMIN_COMMAND_USAGE['agent add']}`")
    assert await snapshot(service) == before


async def test_agent_list_names_each_agent_its_user_and_whether_a_key_is_set(
    service: Harness,
) -> None:
    await task_admin(service, "agent add reviewer display=Reviewer")
    await service.core.registry.set_api_key("reviewer", SECRET_KEY)

    reply = await task_admin(service, "agent list")

    assert reply.splitlines() == [
        "*Agents*",
        f"• `coder` (external) Coder · <@{AGENT_USER}>",
        "• `reviewer` (external) Reviewer · API key set",
    ]
    assert SECRET_KEY not in reply


async def test_agent_list_with_no_agents_says_how_to_add_one(service: Harness) -> None:
    await task_admin(service, "agent remove coder")
    assert await task_admin(service, "agent list") == (
        "No agents yet. Add one with `/task-admin agent add <@user>`."
    )


async def test_agent_remove_unregisters_it_and_its_tasks_keep_their_history(
    board: Harness,
) -> None:
    history = await events_of(board, 1)

    reply = await task_admin(board, "agent remove Coder")

    assert reply == "Agent `coder` is removed; its tasks keep their history."
    assert await board.core.registry.list_agents() == []
    assert await events_of(board, 1) == history
    assert (await board.task(1)).assignee == "coder"
    assert "There is no agent named `coder`" in await board.command("assign 2 coder")


async def test_a_disabled_agent_cannot_be_assigned_until_enabled_again(board: Harness) -> None:
    reply = await task_admin(board, "agent disable Coder")

    assert reply == (
        "Agent `coder` is disabled: it cannot be assigned, its MCP tokens are refused and the "
        "built-in runtime starts no new runs for it. It still holds 1 task(s): *C1#1*. Reassign "
        "them, or they are blocked when their leases lapse. `/task-admin agent enable coder` "
        "undoes this."
    )
    assert "· disabled" in await task_admin(board, "agent list")
    await board.command("new Another job")
    refused = await board.command("assign 4 coder")
    assert "Agent `coder` is disabled and cannot take tasks." in refused
    assert (await board.task(4)).assignee is None

    assert await task_admin(board, "agent enable coder") == (
        "Agent `coder` is enabled and can be assigned again."
    )
    assert "Assigned *C1#4* to `coder`" in await board.command("assign 4 coder")


@pytest.mark.parametrize(
    ("text", "problem", "usage"),
    [
        ("agent remove ghost", "There is no agent named `ghost`.", "agent remove"),
        ("agent remove", "`agent remove` needs the agent's name.", "agent remove"),
        ("agent remove coder ghost", "`agent remove` needs the agent's name.", "agent remove"),
        ("agent key ghost", "There is no agent named `ghost`.", "agent key"),
        ("agent disable ghost", "There is no agent named `ghost`.", "agent disable"),
        ("agent disable", "`agent disable` needs the agent's name.", "agent disable"),
        ("agent enable ghost", "There is no agent named `ghost`.", "agent enable"),
        ("agent enable a b", "`agent enable` needs the agent's name.", "agent enable"),
        ("agent key", "`agent key` needs the agent's name.", "agent key"),
    ],
)
async def test_an_agent_command_naming_no_or_an_unknown_agent_is_refused(
    service: Harness, text: str, problem: str, usage: str
) -> None:
    before = await snapshot(service)

    reply = await task_admin(service, text)

    assert reply == f":warning: {problem}\nUsage: `{ADMIN_COMMAND_USAGE[usage]}`"
    assert await snapshot(service) == before
    assert service.standin.calls_to("views.open") == []


async def test_agent_key_opens_a_modal_and_the_reply_holds_no_key(service: Harness) -> None:
    await service.core.registry.set_api_key("coder", SECRET_KEY)

    reply = await task_admin(service, "agent key coder")

    assert reply == (
        "Enter `coder`'s API key in the form; it is stored encrypted and never shown again."
    )
    [call] = service.standin.calls_to("views.open")
    assert call.args["trigger_id"] == "trigger-1"
    view = call.args["view"]
    assert view["callback_id"] == AGENT_KEY_VIEW == "agent_key_modal"
    assert json.loads(view["private_metadata"]) == {"agent": "coder"}
    [block] = view["blocks"]
    assert (block["block_id"], block["element"]["action_id"]) == ("api_key", "value")
    assert "initial_value" not in block["element"]
    assert SECRET_KEY not in json.dumps(call.args)


# /task-admin: policy ---------------------------------------------------------------------------


async def policies(service: Harness) -> dict[str, ChannelPolicy]:
    return (await service.core.channel_policies.policies()).channels


async def test_policy_shows_the_global_defaults_until_the_channel_overrides_them(
    service: Harness,
) -> None:
    expected = (
        "Lease policy in <#C1> (the global defaults): TTL 600s, "
        "2 dispatch attempt(s) before a silent task is blocked; only people mark tasks done."
    )
    assert await task_admin(service, "policy") == expected
    assert await task_admin(service, "policy show") == expected
    assert await policies(service) == {}


async def test_policy_ttl_and_attempts_override_this_channel_only(service: Harness) -> None:
    reply = await task_admin(service, "policy ttl 60")
    assert reply == (
        "Lease policy in <#C1> (this channel's own): TTL 60s, "
        "2 dispatch attempt(s) before a silent task is blocked; only people mark tasks done."
    )
    assert await policies(service) == {"C1": ChannelPolicy("C1", 60.0, None)}

    reply = await task_admin(service, "policy attempts 3")
    assert "TTL 60s, 3 dispatch attempt(s)" in reply
    assert await policies(service) == {"C1": ChannelPolicy("C1", 60.0, 3)}

    elsewhere = await service.command("policy", command="/task-admin", user=ADMIN, channel="C2")
    assert "(the global defaults): TTL 600s, 2 dispatch attempt(s)" in elsewhere


async def test_a_channels_ttl_governs_its_directives_and_its_reconcile(service: Harness) -> None:
    await task_admin(service, "policy ttl 60")
    await task_admin(service, "policy attempts 3")
    await service.command("new Fix the login bug")
    await service.command("assign 1 coder")
    await service.deliver()
    assert "Attempt 1/3 · lease 60s" in service.standin.posts(CHANNEL)[-1]["text"]

    service.clock.advance(61)

    assert "lease *lapsed*" in await service.command("show 1")
    assert await task_admin(service, "reconcile") == (
        "Reconcile tick: re-dispatched *C1#1*; blocked none; renewed from missed posts none; "
        "0 changed meanwhile, 0 deferred."
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("policy ttl -5", "The TTL must be a positive number of seconds."),
        ("policy ttl 0", "The TTL must be a positive number of seconds."),
        ("policy ttl abc", "`abc` is not a number."),
        ("policy ttl", "`policy ttl` needs one number."),
        ("policy ttl 60 70", "`policy ttl` needs one number."),
        ("policy attempts 2.5", "Attempts must be a whole number."),
        ("policy attempts 0", "Attempts must be at least 1."),
        ("policy attempts many", "`many` is not a number."),
        ("policy bogus", "`policy bogus` is not understood."),
        ("policy show all", "`policy show all` is not understood."),
    ],
)
async def test_a_bad_policy_change_says_why_and_changes_nothing(
    service: Harness, text: str, problem: str
) -> None:
    await task_admin(service, "policy ttl 120")
    before = await snapshot(service)

    reply = await task_admin(service, text)

    assert reply == f":warning: {problem}\nUsage: `{ADMIN_COMMAND_USAGE['policy']}`"
    assert await snapshot(service) == before


@pytest.mark.parametrize(
    "text",
    [
        "policy ttl inf",
        "policy ttl nan",
        "policy ttl 1e300",
        "policy ttl 1e11",
        "policy attempts inf",
        "policy attempts nan",
        "policy attempts 1e30",
    ],
)
async def test_a_policy_value_that_is_not_a_sane_finite_number_is_refused(
    service: Harness, text: str
) -> None:
    """Such a TTL overflows ``timedelta`` or ``now - ttl`` wherever the policy is read later.

    Today ``ttl inf`` is stored before the reply fails, after which every reconcile tick raises
    OverflowError (for all channels); ``ttl 1e11`` is accepted, after which no card in the
    channel can be rendered or delivered and ``/task show`` fails there.
    """
    reply = await task_admin(service, text)

    assert reply.startswith(":warning: ")
    assert reply.endswith(f"Usage: `{ADMIN_COMMAND_USAGE['policy']}`")
    assert await policies(service) == {}
    assert (await service.core.reconciler.reconcile_stale_tasks()).acted == 0


# /task-admin: reconcile and stats --------------------------------------------------------------


async def test_reconcile_reports_what_it_did(board: Harness) -> None:
    assert await task_admin(board, "reconcile") == (
        "Reconcile tick: re-dispatched none; blocked none; renewed from missed posts none; "
        "0 changed meanwhile, 0 deferred."
    )

    board.clock.advance(601)
    assert "re-dispatched *C1#1*; blocked none" in await task_admin(board, "reconcile")
    await board.deliver()
    assert "Attempt 2/2" in board.standin.posts(CHANNEL)[-1]["text"]

    board.clock.advance(601)
    assert "re-dispatched none; blocked *C1#1*" in await task_admin(board, "reconcile")
    await board.deliver()
    assert (await board.task(1)).status == TaskStatus.BLOCKED
    assert "`blocked`" in card_status(board)


async def test_stats_counts_tasks_by_status_stale_blocked_and_the_outbox_backlog(
    board: Harness,
) -> None:
    assert await task_admin(board, "stats") == (
        "*Tasks*: blocked 1, done 1, todo 1\n*Stale leases*: 0\n*Blocked*: 1\n"
        "*Outbox backlog*: 0 undelivered"
    )

    await board.command("new Update the docs")
    board.clock.advance(601)
    backlog = [r for r in await board.core.store.list_outbox() if r.state != OutboxState.DELIVERED]
    assert len(backlog) == 1

    assert await task_admin(board, "stats") == (
        "*Tasks*: blocked 1, done 1, todo 2\n*Stale leases*: 1\n*Blocked*: 1\n"
        "*Outbox backlog*: 1 undelivered"
    )


async def test_stats_judges_staleness_by_each_channels_own_ttl(board: Harness) -> None:
    assert "TTL 60s" in await task_admin(board, "policy ttl 60")
    board.clock.advance(61)  # past this channel's 60 s, well within the global 600 s
    assert "*Stale leases*: 1\n" in await task_admin(board, "stats")


async def test_stats_on_an_empty_board_says_no_tasks(service: Harness) -> None:
    assert (await task_admin(service, "stats")).startswith("*Tasks*: no tasks\n")


@pytest.mark.parametrize("text", ["frobnicate", "agent dance", "agent"])
async def test_an_unknown_admin_subcommand_is_named_and_answered_with_the_usage(
    service: Harness, text: str
) -> None:
    reply = await task_admin(service, text)
    assert reply == f":warning: `{text}` is not a `/task-admin` command.\n{ADMIN_USAGE}"


@pytest.mark.parametrize("text", ["", "help", "Help"])
async def test_admin_help_shows_the_admin_usage(service: Harness, text: str) -> None:
    assert await task_admin(service, text) == ADMIN_USAGE


async def test_an_unclosed_quote_in_an_admin_command_is_refused(service: Harness) -> None:
    before = await snapshot(service)
    reply = await task_admin(service, 'agent add "newbie')
    assert reply == f":warning: A quote is not closed.\n{ADMIN_USAGE}"
    assert await snapshot(service) == before


# The agent key modal ---------------------------------------------------------------------------


def key_submission(user: str, agent: str = "coder", key: str = SECRET_KEY) -> dict[str, Any]:
    return {
        "type": "view_submission",
        "team": {"id": "T1", "domain": "test"},
        "user": {"id": user, "team_id": "T1"},
        "api_app_id": "A1",
        "token": "x",
        "trigger_id": "trigger-2",
        "view": {
            "id": "V1",
            "type": "modal",
            "callback_id": AGENT_KEY_VIEW,
            "private_metadata": json.dumps({"agent": agent}),
            "state": {"values": {"api_key": {"value": {"type": "plain_text_input", "value": key}}}},
        },
    }


async def test_an_admin_submitting_the_key_form_stores_the_key_encrypted(
    service: Harness,
) -> None:
    with structlog.testing.capture_logs() as logs:
        response = await service.interact(key_submission(ADMIN))

    assert response.status == 200
    assert SECRET_KEY not in await response.text()
    assert await service.core.registry.get_api_key("coder") == SECRET_KEY
    [coder] = await service.core.registry.list_agents()
    assert coder.api_key_configured is True
    async with service.core.store.read() as reader:
        stored = await reader.get_agent_secret("coder", "api_key")
    assert stored is not None
    assert SECRET_KEY.encode() not in stored
    listed = await task_admin(service, "agent list")
    assert "API key set" in listed
    assert SECRET_KEY not in listed
    [logged] = [log for log in logs if log["event"] == "agent.api_key_set"]
    assert (logged["agent"], logged["by"]) == ("coder", ADMIN)
    assert SECRET_KEY not in repr(logs)
    assert all(SECRET_KEY not in json.dumps(c.args) for c in service.standin.calls)


async def test_a_non_admin_submitting_the_key_form_gets_a_form_error_and_nothing_is_stored(
    service: Harness,
) -> None:
    response = await service.interact(key_submission(ALICE))

    assert response.status == 200
    answer = await response.json()
    assert answer == {
        "response_action": "errors",
        "errors": {"api_key": "Only admins can set keys."},
    }
    assert await service.core.registry.get_api_key("coder") is None
    [coder] = await service.core.registry.list_agents()
    assert coder.api_key_configured is False
    assert all(SECRET_KEY not in json.dumps(c.args) for c in service.standin.calls)


@pytest.mark.parametrize(
    ("agent", "key", "error"),
    [
        ("coder", "   ", "The API key is empty."),
        ("ghost", SECRET_KEY, "There is no agent named `ghost`."),
    ],
)
async def test_a_bad_key_submission_is_answered_on_the_form(
    service: Harness, agent: str, key: str, error: str
) -> None:
    response = await service.interact(key_submission(ADMIN, agent=agent, key=key))

    assert await response.json() == {"response_action": "errors", "errors": {"api_key": error}}
    assert await service.core.registry.get_api_key("coder") is None


async def test_a_built_in_claude_agent_is_registered_with_its_runtime_settings(
    service: Harness,
) -> None:
    reply = await task_admin(
        service,
        'agent add builder claude model=claude-opus-4-7 system="Be terse." max_tokens=2048 autonomy=wait',
    )
    assert reply.startswith(
        "Agent `builder` is registered as `claude`, model `claude-opus-4-7`, autonomy `wait`"
    )
    assert "/task-admin agent key builder" in reply
    builder = next(a for a in await service.core.registry.list_agents() if a.name == "builder")
    assert (
        builder.settings.model,
        builder.settings.system_prompt,
        builder.settings.max_tokens,
    ) == (
        "claude-opus-4-7",
        "Be terse.",
        2048,
    )
    assert builder.settings.autonomy.value == "wait"


async def test_an_mcp_token_is_shown_once_works_and_can_be_revoked(service: Harness) -> None:
    reply = await task_admin(service, "agent token coder")
    token = reply.split("`")[3]
    assert token.startswith("twk_")
    agent = await service.core.registry.agent_for_token(token)
    assert agent is not None
    assert agent.name == "coder"
    again = await task_admin(service, "agent token coder")
    assert token not in again
    revoked = await task_admin(service, "agent token coder revoke")
    assert revoked.startswith("Revoked 2 MCP token(s) of `coder`")
    assert await service.core.registry.agent_for_token(token) is None
    refused = await task_admin(service, "agent token coder forever")
    assert refused.startswith(
        ":warning: `agent token` needs the agent's name, and optionally `revoke`."
    )


async def test_a_channel_can_let_agents_close_their_own_tasks(service: Harness) -> None:
    reply = await task_admin(service, "policy agents-close on")
    assert reply.endswith("agents may mark tasks done.")
    assert (await service.core.channel_policies.policies()).agents_may_close("C1")
    assert not (await service.core.channel_policies.policies()).agents_may_close("C2")
    refused = await task_admin(service, "policy agents-close maybe")
    assert refused.startswith(":warning: `policy agents-close` takes `on` or `off`.")
    await task_admin(service, "policy agents-close off")
    assert not (await service.core.channel_policies.policies()).agents_may_close("C1")


async def test_a_command_that_says_payload_is_still_a_command(service: Harness) -> None:
    # Bolt's own body parser mistakes any form body containing "payload" for interactivity.
    assert "Created *C1#1*" in await service.command("new Fix the payload parser")
    assert (await service.task(1)).title == "Fix the payload parser"


async def test_show_stays_within_what_slack_shows_however_many_artifacts_a_task_has(
    service: Harness,
) -> None:
    await service.command("new Many artifacts")
    await service.command("assign 1 coder")
    task = await service.task(1)
    for n in range(100):
        await service.core.work.add_artifact(
            task.ref,
            "coder",
            f"artifact {n} " + "n" * 180,
            "k" * 200,
            uri=f"https://files.example/{n}/" + "u" * 1900,
            epoch=task.lease_epoch,
        )
    reply = await service.command("show 1")
    assert len(reply) <= 3900
    assert "artifact 99" in reply
    assert "artifact 0 " not in reply


@pytest.mark.parametrize(
    ("command", "text"),
    [
        ("/task", "<!channel> 1"),
        ("/task", "assign 1 <!here>"),
        ("/task", "show <https://evil.example|C1#1>"),
        ("/task-admin", "<!everyone> now"),
        ("/task-admin", "agent remove <!subteam^S123>"),
    ],
)
async def test_a_refusal_quoting_what_was_typed_shows_it_as_text(
    service: Harness, command: str, text: str
) -> None:
    reply = await service.command(text, command=command, user=ADMIN)
    assert reply.startswith(":warning:"), reply
    assert "<!" not in reply
    assert "<https://evil" not in reply
