"""Built-in agents' tool servers: the admin grammar, and the book on SQLite and PostgreSQL
(header values encrypted like API keys, the per-agent limit, only admins, nothing half-done)."""

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import structlog
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.agents import AgentKind
from bot.errors import InvalidInput, NotAllowed, NotFound
from bot.root import Core, Overrides, open_core
from bot.settings import Settings, SettingsError, load_settings
from bot.task import Actor
from bot.tool_servers import (
    ToolServer,
    ToolServerAdd,
    ToolServerList,
    ToolServerRemove,
    Transport,
    parse_request,
)
from store.schema import agent_secrets, agent_tool_servers
from tests.conftest import TEST_SECRET_KEY, FakeClock, core_settings

TOKEN = "ghp_header-secret-value-5f1e"
OTHER_SECRET_KEY = "yO_fwUWa3K-UzPnQ4IrMwIAWVo911YB7Qe_OyFYQif4="
OPERATOR = Actor.system("test")
GIT = ["add", "git", "stdio", "mcp-server-git --repository '/srv/my repo'"]
WEB = ["add", "web", "http", "https://tools.example/mcp", f"header=Authorization:Bearer_{TOKEN}"]


def adding(words: list[str]) -> ToolServerAdd:
    request = parse_request(words)
    assert isinstance(request, ToolServerAdd)
    return request


# -- the grammar ------------------------------------------------------------------------------


def test_the_words_of_each_action_parse_into_typed_requests() -> None:
    git = adding([*GIT, "allow=git_status,git_log"])
    assert git.server == ToolServer(
        "git",
        Transport.STDIO,
        command=("mcp-server-git", "--repository", "/srv/my repo"),
        allow=("git_log", "git_status"),
    )
    assert git.server.target == "mcp-server-git --repository '/srv/my repo'"
    web = adding([*WEB, "header=X-Team:core"])
    assert web.server.header_names == ("Authorization", "X-Team")
    assert web.headers == {"Authorization": f"Bearer_{TOKEN}", "X-Team": "core"}
    assert TOKEN not in repr(web)
    assert TOKEN not in web.server.describe()
    assert parse_request(["list"]) == ToolServerList()
    assert parse_request(["REMOVE", "git"]) == ToolServerRemove("git")


@pytest.mark.parametrize(
    ("words", "fragment"),
    [
        ([], "needs `add`, `remove` or `list`"),
        (["launch"], "`launch` is not a `tools` action"),
        (["list", "extra"], "takes nothing after it"),
        (["remove"], "needs the label of one server"),
        (["add"], "needs a label, a transport"),
        (["add", "Git!", "stdio", "x"], "is not a tool server label"),
        (["add", "my_git", "stdio", "x"], "is not a tool server label"),
        (["add", "git"], "Say how to reach it"),
        (["add", "git", "ssh", "x"], "`ssh` is not a transport"),
        (["add", "git", "stdio"], "(the command in quotes)"),
        (["add", "git", "stdio", "mcp-server-git", "--repository", "."], "exactly one command"),
        (["add", "git", "stdio", ""], "The command is empty"),
        (["add", "git", "stdio", "x", "header=A:b"], "`header=` is for http servers"),
        (["add", "web", "http", "ftp://host/mcp"], "needs an http(s) URL"),
        (["add", "web", "http", "https://u:p@host/mcp"], "must not carry credentials"),
        (["add", "web", "http", "https://h/mcp", "header=NoColon"], "A header is `header="),
        (["add", "web", "http", "https://h/mcp", "header=Host:x"], "set by the MCP transport"),
        (["add", "web", "http", "https://h/mcp", "header=A:1", "header=a:2"], "given twice"),
        (["add", "git", "stdio", "x", "allow="], "`allow=` takes the server's own tool names"),
        (["add", "git", "stdio", "x", "allow=a b"], "`allow=` takes the server's own tool"),
        (["add", "git", "stdio", "x", "allow=a", "allow=b"], "Give `allow=` once"),
    ],
)
def test_each_mistake_is_named(words: list[str], fragment: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_request(words)
    assert fragment in refused.value.message


def test_a_header_mistake_never_repeats_the_value() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_request(["add", "web", "http", "https://h/mcp", f"header=Bad Name:{TOKEN}"])
    assert TOKEN not in refused.value.message


# -- the book ---------------------------------------------------------------------------------

#: THREADWORK_TOOL_SERVER_COMMANDS for these tests: the commands their stdio servers run.
COMMANDS = "mcp-server-git,server,other-server"


def book_settings(database_url: str, **variables: str) -> Settings:
    """The core tests' settings, with the stdio commands these tests add permitted."""
    return Settings(
        DATABASE_URL=database_url,
        THREADWORK_SECRET_KEY=TEST_SECRET_KEY,
        THREADWORK_TOOL_SERVER_COMMANDS=COMMANDS,
        **variables,
    )


@pytest.fixture
async def core(database_url: str, clock: FakeClock) -> AsyncIterator[Core]:
    async with open_core(book_settings(database_url), Overrides(clock=clock)) as core:
        yield core


@pytest.fixture
async def claude(core: Core) -> Core:
    await core.registry.add_agent("claude-1", AgentKind.CLAUDE)
    return core


async def test_servers_are_added_listed_replaced_and_removed_by_label(claude: Core) -> None:
    desk = claude.admin
    assert (
        await desk.add_tool_server(OPERATOR, "claude-1", adding([*GIT, "allow=git_log"])) is False
    )
    assert await desk.add_tool_server(OPERATOR, "claude-1", adding(WEB)) is False
    listed = await desk.list_tool_servers(OPERATOR, "claude-1")
    assert [s.label for s in listed] == ["git", "web"]
    assert listed[0].allow == ("git_log",)
    assert await desk.add_tool_server(OPERATOR, "claude-1", adding(GIT)) is True
    [git, _web] = await desk.list_tool_servers(OPERATOR, "claude-1")
    assert git.allow is None
    await desk.remove_tool_server(OPERATOR, "claude-1", "git")
    assert [s.label for s in await desk.list_tool_servers(OPERATOR, "claude-1")] == ["web"]
    with pytest.raises(NotFound, match="has no tool server `git`"):
        await desk.remove_tool_server(OPERATOR, "claude-1", "git")


async def test_header_values_are_stored_encrypted_and_only_a_run_reads_them(
    claude: Core, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        await claude.admin.add_tool_server(OPERATOR, "claude-1", adding(WEB))
        listed = await claude.admin.list_tool_servers(OPERATOR, "claude-1")
    async with engine.connect() as conn:
        rows = (await conn.execute(select(agent_tool_servers))).all()
        [(name, ciphertext)] = (
            await conn.execute(select(agent_secrets.c.name, agent_secrets.c.ciphertext))
        ).all()
    assert name == "tool:web"
    assert TOKEN.encode() not in bytes(ciphertext)
    assert TOKEN not in repr(rows)
    assert TOKEN not in repr(listed) + caplog.text + repr(logs)
    [launch] = await claude.registry.tool_servers.launches("claude-1")
    assert launch.headers == {"Authorization": f"Bearer_{TOKEN}"}
    assert TOKEN not in repr(launch)
    report = await claude.registry.secrets_report()
    assert (report.stored, report.readable) == (1, 1)


async def test_replacing_or_removing_a_server_discards_its_stored_headers(
    claude: Core, engine: AsyncEngine
) -> None:
    await claude.admin.add_tool_server(OPERATOR, "claude-1", adding(WEB))
    plain = ["add", "web", "http", "https://tools.example/mcp"]
    await claude.admin.add_tool_server(OPERATOR, "claude-1", adding(plain))
    async with engine.connect() as conn:
        assert (await conn.execute(select(agent_secrets))).all() == []
    await claude.admin.add_tool_server(OPERATOR, "claude-1", adding(WEB))
    await claude.admin.remove_tool_server(OPERATOR, "claude-1", "web")
    async with engine.connect() as conn:
        assert (await conn.execute(select(agent_secrets))).all() == []


async def test_headers_under_another_key_make_the_server_fail_to_start_not_the_run(
    database_url: str, claude: Core, clock: FakeClock
) -> None:
    await claude.admin.add_tool_server(OPERATOR, "claude-1", adding(WEB))
    other = book_settings(database_url).model_copy(
        update={"secret_key": SecretStr(OTHER_SECRET_KEY)}
    )
    async with open_core(other, Overrides(clock=clock)) as wrong:
        [launch] = await wrong.registry.tool_servers.launches("claude-1")
    assert launch.headers == {}
    assert launch.problem == "its stored headers cannot be decrypted with the configured keys"


async def test_rotation_re_encrypts_header_values_with_the_api_keys(
    database_url: str, claude: Core, clock: FakeClock
) -> None:
    await claude.admin.add_tool_server(OPERATOR, "claude-1", adding(WEB))
    rotated = core_settings(database_url).model_copy(
        update={
            "secret_key": SecretStr(OTHER_SECRET_KEY),
            "secret_key_previous": claude.settings.secret_key,
        }
    )
    async with open_core(rotated, Overrides(clock=clock)) as after:
        assert (await after.registry.rotate_secrets()).rotated == 1
    only_new = core_settings(database_url).model_copy(
        update={"secret_key": SecretStr(OTHER_SECRET_KEY)}
    )
    async with open_core(only_new, Overrides(clock=clock)) as later:
        [launch] = await later.registry.tool_servers.launches("claude-1")
    assert launch.headers == {"Authorization": f"Bearer_{TOKEN}"}


async def test_an_agent_has_at_most_the_configured_number_of_servers(
    database_url: str, clock: FakeClock
) -> None:
    settings = book_settings(database_url, THREADWORK_AGENT_TOOL_SERVERS="2")
    async with open_core(settings, Overrides(clock=clock)) as core:
        await core.registry.add_agent("claude-1", AgentKind.CLAUDE)
        for label in ("one", "two"):
            words = ["add", label, "stdio", "server"]
            await core.admin.add_tool_server(OPERATOR, "claude-1", adding(words))
        third = adding(["add", "three", "stdio", "server"])
        with pytest.raises(InvalidInput, match="THREADWORK_AGENT_TOOL_SERVERS"):
            await core.admin.add_tool_server(OPERATOR, "claude-1", third)
        again = adding(["add", "two", "stdio", "other-server"])
        assert await core.admin.add_tool_server(OPERATOR, "claude-1", again) is True
        listed = await core.admin.list_tool_servers(OPERATOR, "claude-1")
    assert [(s.label, s.command) for s in listed] == [
        ("one", ("server",)),
        ("two", ("other-server",)),
    ]


async def test_the_limit_holds_for_adds_made_at_once_from_two_processes(
    database_url: str, clock: FakeClock
) -> None:
    settings = book_settings(database_url, THREADWORK_AGENT_TOOL_SERVERS="3")
    async with (
        open_core(settings, Overrides(clock=clock)) as one,
        open_core(settings, Overrides(clock=clock)) as two,
    ):
        await one.registry.add_agent("claude-1", AgentKind.CLAUDE)
        adds = [
            (one, two)[n % 2].admin.add_tool_server(
                OPERATOR, "claude-1", adding(["add", f"s{n}", "stdio", "server"])
            )
            for n in range(8)
        ]
        results = await asyncio.gather(*adds, return_exceptions=True)
        listed = await one.admin.list_tool_servers(OPERATOR, "claude-1")
    assert sum(result is False for result in results) == 3
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 5
    for refusal in refused:
        assert isinstance(refusal, InvalidInput)
        assert refusal.message.startswith("`claude-1` already has 3 tool servers, and 3 is the")
    assert len(listed) == 3


async def test_external_agents_unknown_agents_and_non_admins_are_refused(
    claude: Core, engine: AsyncEngine
) -> None:
    await claude.registry.add_agent("outside")
    with pytest.raises(InvalidInput, match="external agent: it brings its own tools"):
        await claude.admin.add_tool_server(OPERATOR, "outside", adding(GIT))
    with pytest.raises(NotFound, match="no agent named `ghost`"):
        await claude.admin.add_tool_server(OPERATOR, "ghost", adding(GIT))
    with pytest.raises(NotFound, match="no agent named `ghost`"):
        await claude.admin.list_tool_servers(OPERATOR, "ghost")
    person = Actor.user("UNOTADMIN")
    with pytest.raises(NotAllowed):
        await claude.admin.add_tool_server(person, "claude-1", adding(GIT))
    with pytest.raises(NotAllowed):
        await claude.admin.list_tool_servers(person, "claude-1")
    with pytest.raises(NotAllowed):
        await claude.admin.remove_tool_server(person, "claude-1", "git")
    async with engine.connect() as conn:
        assert (await conn.execute(select(agent_tool_servers))).all() == []


async def test_removing_an_agent_removes_its_servers_and_their_headers(
    claude: Core, engine: AsyncEngine
) -> None:
    await claude.admin.add_tool_server(OPERATOR, "claude-1", adding(WEB))
    await claude.registry.remove_agent("claude-1")
    async with engine.connect() as conn:
        assert (await conn.execute(select(agent_tool_servers))).all() == []
        assert (await conn.execute(select(agent_secrets))).all() == []


@pytest.mark.parametrize("value", ["0", "-1", "many", "65"])
def test_a_bad_server_limit_stops_start_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("THREADWORK_AGENT_TOOL_SERVERS", value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert message.startswith("THREADWORK_AGENT_TOOL_SERVERS: ")
    assert "\n" not in message


def test_the_server_limit_defaults_to_eight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THREADWORK_AGENT_TOOL_SERVERS", raising=False)
    assert load_settings().agent_tool_servers == 8
