"""The ``threadwork`` command, run as a real subprocess against a database it shares with us.

Each run gets a clean environment (PATH, HOME and DATABASE_URL, plus what the test adds), so no
real Slack or Anthropic variable can leak in. Tasks are seeded in-process through the domain API
on the same database, then read back through the CLI.
"""

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from bot.agents import AgentKind
from bot.board import Board
from bot.registry import AgentRegistry
from bot.root import Overrides, open_core
from bot.settings import Settings
from bot.task import Actor, Task, ThreadMessage
from bot.thread_posts import ThreadPosts
from store.database import create_engine
from store.migrate import alembic_config, current_revision
from tests.conftest import FakeClock

THREADWORK = Path(sys.executable).parent / "threadwork"
COMMAND_TIMEOUT_S = 30
SECRET_KEY = "TeNtaJ9DDN-hj45ip0b_as-iO2x1fo82bK5t0-7i42Q="
API_KEY = "sk-ant-cli-test-7f3a9c1e5b"


@dataclass(frozen=True)
class Result:
    """What one CLI run printed and how it exited."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """The whole of stdout read as one JSON document."""
        return json.loads(self.stdout)


async def threadwork(*args: str, env: Mapping[str, str], stdin: str = "") -> Result:
    """Runs the console script with exactly ``env`` and ``stdin``; kills it past the timeout."""
    process = await asyncio.create_subprocess_exec(
        str(THREADWORK),
        *args,
        env=dict(env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            stdout, stderr = await process.communicate(stdin.encode())
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


def clean_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """PATH, HOME and DATABASE_URL only: nothing inherited from this shell, no real secrets."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp_path),
        "DATABASE_URL": database_url,
    }


@pytest.fixture
def sqlite_path(tmp_path: Path, sqlite_template: Path) -> Path:
    """A migrated SQLite file of this test's own."""
    path = tmp_path / "cli.db"
    shutil.copy(sqlite_template, path)
    return path


@pytest.fixture
def env(tmp_path: Path, sqlite_path: Path) -> dict[str, str]:
    return clean_env(tmp_path, f"sqlite:///{sqlite_path}")


@dataclass(frozen=True)
class Domain:
    """The use cases over the database the CLI reads, driven by a fake clock."""

    board: Board
    thread_posts: ThreadPosts
    registry: AgentRegistry
    clock: FakeClock


@pytest.fixture
async def domain(env: dict[str, str], clock: FakeClock) -> AsyncIterator[Domain]:
    settings = Settings(DATABASE_URL=env["DATABASE_URL"], THREADWORK_SECRET_KEY=SECRET_KEY)
    async with open_core(settings, Overrides(clock=clock)) as core:
        yield Domain(core.board, core.thread_posts, core.registry, clock)


async def seed_worked_task(domain: Domain) -> Task:
    """C123#1: created, assigned to claude-1 five seconds later, then one post from it."""
    await domain.registry.add_agent("claude-1", slack_user_id="UAGENT")
    task = await domain.board.create_task(
        "C123", "Write the release notes", Actor.user("U1"), thread_ts="1700000000.000100"
    )
    domain.clock.advance(5)
    await domain.board.assign_task(task.ref, "claude-1", by="U1")
    domain.clock.advance(30)
    message = ThreadMessage(
        task_id=task.id,
        channel_id="C123",
        ts="1700000035.000200",
        author="UAGENT",
        text="Starting on the notes now.",
        at=domain.clock(),
    )
    assert await domain.thread_posts.record_thread_message(message, agent="claude-1")
    return task


def assert_one_error_line(result: Result, code: int, *fragments: str) -> None:
    """The run failed with ``code``, printing nothing but one ``error:`` line on stderr."""
    assert result.code == code, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


# -- db upgrade ------------------------------------------------------------------------------


async def test_db_upgrade_creates_the_schema_in_an_empty_file_and_a_second_run_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    env = clean_env(tmp_path, f"sqlite:///{path}")

    first = await threadwork("db", "upgrade", env=env)
    assert (first.code, first.stdout, first.stderr) == (0, "database upgraded to head\n", "")
    added = await threadwork("agents", "add", "claude-1", env=env)
    assert added.code == 0, added
    second = await threadwork("db", "upgrade", env=env)
    assert (second.code, second.stdout, second.stderr) == (0, "database upgraded to head\n", "")

    engine = create_engine(env["DATABASE_URL"])
    try:
        assert await current_revision(engine) is not None
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await engine.dispose()
    assert {"tasks", "task_events", "task_messages", "agents", "agent_secrets", "outbox"} <= set(
        tables
    )
    listed = await threadwork("agents", "list", "--json", env=env)
    assert [agent["name"] for agent in listed.json()] == ["claude-1"]


async def test_tasks_list_before_any_upgrade_says_to_run_db_upgrade_and_exits_1(
    tmp_path: Path,
) -> None:
    env = clean_env(tmp_path, f"sqlite:///{tmp_path / 'never-migrated.db'}")

    result = await threadwork("tasks", "list", env=env)

    assert_one_error_line(result, 1, "no schema", "threadwork db upgrade")


async def test_a_command_on_a_schema_behind_head_says_to_run_db_upgrade_and_exits_1(
    tmp_path: Path,
) -> None:
    script = ScriptDirectory.from_config(alembic_config())
    base, head = script.get_base(), script.get_current_head()
    if base == head:
        pytest.skip("there is only one migration, so no schema can be behind head")
    env = clean_env(tmp_path, f"sqlite:///{tmp_path / 'behind.db'}")
    behind = await threadwork("db", "upgrade", "--revision", str(base), env=env)
    assert behind.code == 0, behind

    result = await threadwork("tasks", "list", env=env)

    assert_one_error_line(result, 1, "threadwork db upgrade")


# -- tasks show ------------------------------------------------------------------------------


async def test_tasks_show_json_prints_the_task_with_its_events_and_messages_in_order(
    env: dict[str, str], domain: Domain
) -> None:
    await seed_worked_task(domain)

    result = await threadwork("tasks", "show", "C123#1", "--json", env=env)

    assert (result.code, result.stderr) == (0, "")
    view = result.json()
    assert isinstance(view, dict)
    assert {
        key: view[key]
        for key in (
            "ref",
            "number",
            "channel",
            "title",
            "status",
            "assignee",
            "assigned_by",
            "claimed_by",
            "attempts",
            "lease_epoch",
            "last_progress_at",
            "thread_ts",
        )
    } == {
        "ref": "C123#1",
        "number": 1,
        "channel": "C123",
        "title": "Write the release notes",
        "status": "todo",
        "assignee": "claude-1",
        "assigned_by": "U1",
        "claimed_by": "claude-1",
        "attempts": 1,
        "lease_epoch": 1,
        "last_progress_at": "2026-01-05T09:00:35+00:00",
        "thread_ts": "1700000000.000100",
    }
    events = view["events"]
    assert [set(event) for event in events] == [{"id", "kind", "at", "actor", "data"}] * 3
    assert [event["id"] for event in events] == sorted(event["id"] for event in events)
    assert [(e["kind"], e["at"], e["actor"], e["data"]) for e in events] == [
        (
            "created",
            "2026-01-05T09:00:00+00:00",
            "user:U1",
            {"title": "Write the release notes"},
        ),
        (
            "assigned",
            "2026-01-05T09:00:05+00:00",
            "user:U1",
            {"agent": "claude-1", "previous": None, "by": "U1"},
        ),
        (
            "dispatched",
            "2026-01-05T09:00:05+00:00",
            "user:U1",
            {"attempt": 1, "epoch": 1, "agent": "claude-1"},
        ),
    ]
    assert view["messages"] == [
        {"ts": "1700000035.000200", "author": "UAGENT", "text": "Starting on the notes now."}
    ]


async def test_tasks_show_without_json_prints_the_fields_events_and_messages_for_people(
    env: dict[str, str], domain: Domain
) -> None:
    await seed_worked_task(domain)

    result = await threadwork("tasks", "show", "C123#1", env=env)

    assert (result.code, result.stderr) == (0, "")
    assert "ref: C123#1" in result.stdout
    assert "assignee: claude-1" in result.stdout
    assert "last_progress_at: 2026-01-05T09:00:35+00:00" in result.stdout
    assert [line.split()[2] for line in result.stdout.splitlines() if line.startswith("  #")] == [
        "created",
        "assigned",
        "dispatched",
    ]
    assert "1700000035.000200 UAGENT: Starting on the notes now." in result.stdout


async def test_tasks_show_of_an_unknown_ref_says_there_is_no_such_task_and_exits_1(
    env: dict[str, str], domain: Domain
) -> None:
    await seed_worked_task(domain)

    result = await threadwork("tasks", "show", "C123#99", "--json", env=env)

    assert_one_error_line(result, 1, "no task C123#99")


@pytest.mark.parametrize("ref", ["C123-1", "c123#1", "C123#one"])
async def test_tasks_show_of_a_malformed_ref_names_the_expected_form_and_fails(
    env: dict[str, str], ref: str
) -> None:
    result = await threadwork("tasks", "show", ref, env=env)

    assert_one_error_line(result, 1, f"`{ref}` is not a task ref", "CHANNEL#NUMBER")


# -- tasks list ------------------------------------------------------------------------------


@pytest.fixture
async def three_tasks(domain: Domain) -> None:
    """C1#1 todo and unassigned, C1#2 todo and assigned to claude-1, C2#1 canceled."""
    await domain.registry.add_agent("claude-1")
    await domain.board.create_task("C1", "Unassigned", Actor.user("U1"))
    assigned = await domain.board.create_task("C1", "Assigned", Actor.user("U1"))
    await domain.board.assign_task(assigned.ref, "claude-1", by="U1")
    dropped = await domain.board.create_task("C2", "Dropped", Actor.user("U1"))
    await domain.board.cancel_task(dropped.ref, Actor.user("U1"), reason="not needed")


@pytest.mark.usefixtures("three_tasks")
async def test_tasks_list_json_prints_every_task_ordered_by_channel_and_number(
    env: dict[str, str],
) -> None:
    result = await threadwork("tasks", "list", "--json", env=env)

    assert (result.code, result.stderr) == (0, "")
    assert [(t["ref"], t["status"], t["assignee"], t["attempts"]) for t in result.json()] == [
        ("C1#1", "todo", None, 0),
        ("C1#2", "todo", "claude-1", 1),
        ("C2#1", "canceled", None, 0),
    ]


@pytest.mark.usefixtures("three_tasks")
@pytest.mark.parametrize(
    ("status", "refs"),
    [("todo", ["C1#1", "C1#2"]), ("CANCELED", ["C2#1"]), ("in-progress", [])],
)
async def test_tasks_list_with_a_status_shows_only_tasks_in_that_status(
    env: dict[str, str], status: str, refs: list[str]
) -> None:
    result = await threadwork("tasks", "list", "--status", status, "--json", env=env)

    assert (result.code, result.stderr) == (0, "")
    assert [task["ref"] for task in result.json()] == refs


@pytest.mark.usefixtures("three_tasks")
async def test_tasks_list_without_json_prints_a_table_with_a_header(env: dict[str, str]) -> None:
    result = await threadwork("tasks", "list", env=env)

    assert (result.code, result.stderr) == (0, "")
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["REF", "STATUS", "ASSIGNEE", "ATTEMPTS", "TITLE"]
    assert rows[1:] == [
        ["C1#1", "todo", "-", "0", "Unassigned"],
        ["C1#2", "todo", "claude-1", "1", "Assigned"],
        ["C2#1", "canceled", "-", "0", "Dropped"],
    ]


async def test_tasks_list_with_an_unknown_status_is_a_usage_error_listing_the_statuses(
    env: dict[str, str],
) -> None:
    result = await threadwork("tasks", "list", "--status", "bogus", env=env)

    assert_one_error_line(result, 2, "`bogus` is not a status", "in_progress", "canceled")


# -- agents ----------------------------------------------------------------------------------


async def test_agents_add_registers_an_agent_that_agents_list_json_describes(
    env: dict[str, str],
) -> None:
    added = await threadwork(
        "agents",
        "add",
        "Claude-1",
        "--kind",
        "claude",
        "--display-name",
        "Claude One",
        "--slack-user-id",
        "U0AGENT",
        "--slack-bot-id",
        "B0AGENT",
        env=env,
    )
    assert (added.code, added.stdout, added.stderr) == (
        0,
        "agent claude-1 registered (claude)\n",
        "",
    )

    listed = await threadwork("agents", "list", "--json", env=env)

    assert (listed.code, listed.stderr) == (0, "")
    assert listed.json() == [
        {
            "name": "claude-1",
            "kind": "claude",
            "display_name": "Claude One",
            "slack_user_id": "U0AGENT",
            "slack_bot_id": "B0AGENT",
            "enabled": True,
            "model": None,
            "api_key_configured": False,
        }
    ]


async def test_agents_add_with_an_unknown_kind_is_a_usage_error(env: dict[str, str]) -> None:
    result = await threadwork("agents", "add", "claude-1", "--kind", "robot", env=env)

    assert result.code == 2
    assert "robot" in result.stderr
    listed = await threadwork("agents", "list", "--json", env=env)
    assert listed.json() == []


async def test_agents_set_key_stores_the_key_encrypted_and_no_command_ever_prints_it(
    env: dict[str, str], domain: Domain, sqlite_path: Path
) -> None:
    await seed_worked_task(domain)
    keyed = env | {"THREADWORK_SECRET_KEY": SECRET_KEY}

    stored = await threadwork("agents", "set-key", "claude-1", env=keyed, stdin=f"{API_KEY}\n")
    assert (stored.code, stored.stdout, stored.stderr) == (0, "API key stored for claude-1\n", "")
    listed, *others = await asyncio.gather(
        threadwork("agents", "list", "--json", env=keyed),
        threadwork("agents", "list", env=keyed),
        threadwork("tasks", "show", "C123#1", "--json", env=keyed),
        threadwork("tasks", "show", "C123#1", env=keyed),
        threadwork("tasks", "list", "--json", env=keyed),
    )

    assert [a["api_key_configured"] for a in listed.json()] == [True]
    assert await domain.registry.get_api_key("claude-1") == API_KEY
    for run in [stored, listed, *others]:
        assert run.code == 0, run
        for secret in (API_KEY, SECRET_KEY):
            assert secret not in run.stdout
            assert secret not in run.stderr
    for file in sqlite_path.parent.glob(f"{sqlite_path.name}*"):
        assert API_KEY.encode() not in file.read_bytes(), file.name


async def test_agents_set_key_without_a_secret_key_configured_refuses_and_stores_nothing(
    env: dict[str, str], domain: Domain
) -> None:
    await domain.registry.add_agent("claude-1")

    result = await threadwork("agents", "set-key", "claude-1", env=env, stdin=f"{API_KEY}\n")

    assert_one_error_line(result, 1, "THREADWORK_SECRET_KEY")
    assert API_KEY not in result.stderr
    assert await domain.registry.get_api_key("claude-1") is None


@pytest.mark.parametrize(
    ("name", "stdin", "fragment"),
    [("nobody", f"{API_KEY}\n", "no agent named `nobody`"), ("claude-1", "\n", "empty")],
)
async def test_agents_set_key_for_an_unknown_agent_or_an_empty_key_fails_clearly(
    env: dict[str, str], domain: Domain, name: str, stdin: str, fragment: str
) -> None:
    await domain.registry.add_agent("claude-1")
    keyed = env | {"THREADWORK_SECRET_KEY": SECRET_KEY}

    result = await threadwork("agents", "set-key", name, env=keyed, stdin=stdin)

    assert_one_error_line(result, 1, fragment)
    assert API_KEY not in result.stderr


# -- settings --------------------------------------------------------------------------------

BAD_SETTINGS = [
    ("THREADWORK_LEASE_TTL", "0"),
    ("THREADWORK_LEASE_TTL", "abc"),
    ("THREADWORK_LEASE_TTL", "inf"),
    ("THREADWORK_LEASE_TTL", "1e300"),
    ("THREADWORK_RECONCILE_INTERVAL", "-1"),
    ("THREADWORK_MAX_DISPATCH_ATTEMPTS", "0"),
    ("PORT", "99999"),
    ("SLACK_API_URL", "ftp://slack.example"),
    ("DATABASE_URL", "mysql://x"),
    ("DATABASE_URL", "not a url"),
    ("THREADWORK_SECRET_KEY", "cli-test-secret-key"),
    ("THREADWORK_SECRET_KEY", "c2hvcnQta2V5"),
    ("THREADWORK_PUBLIC_URL", "threadwork.example.com"),
    ("THREADWORK_MODEL_HOSTS", "https://api.anthropic.com"),
    ("THREADWORK_TOOL_SERVER_START_TIMEOUT", "0"),
    ("THREADWORK_TOOL_CALL_TIMEOUT", "nan"),
    ("THREADWORK_TOOL_CALL_TIMEOUT", "86400"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_SETTINGS)
async def test_a_bad_setting_stops_a_command_at_start_with_one_line_naming_it_and_exit_2(
    env: dict[str, str], variable: str, value: str
) -> None:
    result = await threadwork("tasks", "list", env=env | {variable: value})

    assert_one_error_line(result, 2, variable)


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        pytest.param(["serve"], "THREADWORK_LEASE_TTL", "0", id="serve-lease-ttl-0"),
        pytest.param(["serve"], "THREADWORK_RECONCILE_INTERVAL", "inf", id="serve-interval-inf"),
        pytest.param(["serve"], "DATABASE_URL", "mysql://x", id="serve-mysql"),
        pytest.param(["serve"], "THREADWORK_SECRET_KEY", "hunter2", id="serve-weak-secret-key"),
        pytest.param(["serve"], "THREADWORK_PUBLIC_URL", "ftp://x", id="serve-public-url-ftp"),
        pytest.param(["db", "upgrade"], "DATABASE_URL", "mysql://x", id="db-upgrade-mysql"),
    ],
)
async def test_a_bad_setting_stops_serve_and_db_upgrade_before_they_start(
    env: dict[str, str], command: list[str], variable: str, value: str
) -> None:
    result = await threadwork(*command, env=env | {variable: value})

    assert_one_error_line(result, 2, variable)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("THREADWORK_LEASE_TTL", "1.5"),
        ("THREADWORK_RECONCILE_INTERVAL", "0.25"),
        ("PORT", "65535"),
    ],
)
async def test_any_positive_duration_and_in_range_number_is_accepted(
    env: dict[str, str], variable: str, value: str
) -> None:
    result = await threadwork("tasks", "list", "--json", env=env | {variable: value})

    assert (result.code, result.stdout, result.stderr) == (0, "[]\n", "")


# -- secrets ---------------------------------------------------------------------------------

NEW_SECRET_KEY = "vnepMS6VIJXM5mAdXNfk76YVrMbWcBm8zVQBuw9_JOw="


async def test_a_weak_secret_key_is_named_and_never_echoed(env: dict[str, str]) -> None:
    result = await threadwork("agents", "list", env=env | {"THREADWORK_SECRET_KEY": "hunter2"})

    assert_one_error_line(result, 2, "THREADWORK_SECRET_KEY", "32 random bytes")
    assert "hunter2" not in result.stderr


async def test_secrets_rotate_moves_stored_keys_to_the_new_key_so_the_old_can_go(
    env: dict[str, str], domain: Domain
) -> None:
    await domain.registry.add_agent("claude-1")
    await domain.registry.set_api_key("claude-1", API_KEY)
    new_only = env | {"THREADWORK_SECRET_KEY": NEW_SECRET_KEY}
    rotating = new_only | {"THREADWORK_SECRET_KEY_PREVIOUS": SECRET_KEY}

    unreadable = await threadwork("agents", "list", "--json", env=new_only)
    refused = await threadwork("secrets", "rotate", env=new_only)
    rotated = await threadwork("secrets", "rotate", env=rotating)
    after = await threadwork("agents", "list", "--json", env=new_only)

    assert [a["api_key_configured"] for a in unreadable.json()] == [False]
    assert_one_error_line(refused, 1, "1 stored secret(s)", "nothing was rotated")
    assert (rotated.code, rotated.stderr) == (0, "")
    assert rotated.stdout == "re-encrypted 1 stored secret(s) under THREADWORK_SECRET_KEY\n"
    assert [a["api_key_configured"] for a in after.json()] == [True]
    for run in (unreadable, refused, rotated, after):
        for secret in (API_KEY, SECRET_KEY, NEW_SECRET_KEY):
            assert secret not in run.stdout + run.stderr


async def test_serve_refuses_to_start_when_keys_are_stored_but_no_secret_key_is_set(
    env: dict[str, str], domain: Domain
) -> None:
    await domain.registry.add_agent("claude-1")
    await domain.registry.set_api_key("claude-1", API_KEY)
    slack = {
        "SLACK_BOT_TOKEN": "xoxb-cli-test",
        "SLACK_SIGNING_SECRET": "cli-signing-secret",
        "SLACK_API_URL": "http://127.0.0.1:9/api/",
        "THREADWORK_MCP_PORT": "0",
    }

    result = await threadwork("serve", "--http", env=env | slack)

    assert_one_error_line(result, 2, "THREADWORK_SECRET_KEY is not set", "1 agent secret(s)")


async def test_agents_add_with_another_kind_discards_the_stored_key_and_says_so(
    env: dict[str, str], domain: Domain
) -> None:
    await domain.registry.add_agent("claude-1", AgentKind.CLAUDE)
    await domain.registry.set_api_key("claude-1", API_KEY)
    keyed = env | {"THREADWORK_SECRET_KEY": SECRET_KEY}

    result = await threadwork("agents", "add", "claude-1", "--kind", "openai", env=keyed)

    assert (result.code, result.stderr) == (0, "")
    assert result.stdout == "agent claude-1 registered (openai); its stored API key was discarded\n"
    assert await domain.registry.get_api_key("claude-1") is None
