"""``/task-admin agent tools``: signed slash commands into the running service, on SQLite and
PostgreSQL. Header values never come back; a mistake is named with the usage, changing nothing."""

from collections.abc import AsyncIterator

import pytest

from bot.agents import AgentKind
from bot.tool_servers import Transport
from tests.conftest import FakeClock
from tests.slack.conftest import ADMIN, ALICE, Harness, start_service
from tests.slack.standin import SlackStandIn

TOKEN = "ghp_slack-header-secret-93c2"
USAGE = "Usage: `/task-admin agent tools <name> add <label> stdio"


async def started(
    database_url: str, standin: SlackStandIn, clock: FakeClock, **settings: object
) -> AsyncIterator[Harness]:
    async for harness in start_service(database_url, standin, clock, **settings):
        await harness.core.registry.add_agent("claude-1", AgentKind.CLAUDE)
        await harness.core.registry.add_agent("coder", slack_user_id="UCODER01")
        yield harness


@pytest.fixture
async def harness(
    database_url: str, standin: SlackStandIn, clock: FakeClock
) -> AsyncIterator[Harness]:
    """The service with the operator permitting ``mcp-server-git`` (and, by default, https)."""
    async for harness in started(
        database_url, standin, clock, tool_server_commands=("mcp-server-git",)
    ):
        yield harness


async def admin(harness: Harness, text: str, user: str = ADMIN) -> str:
    return await harness.command(text, command="/task-admin", user=user)


async def test_an_admin_adds_lists_and_removes_tool_servers(harness: Harness) -> None:
    added = await admin(
        harness,
        "agent tools claude-1 add git stdio "
        '"mcp-server-git --repository /srv/repo" allow=git_log,git_status',
    )
    assert added == (
        "Tool server `git` of `claude-1` is added (stdio). From its next run, the agent is "
        "offered `git__git_log`, `git__git_status`."
    )
    web = await admin(
        harness,
        f"agent tools claude-1 add web http https://tools.example/mcp header=Authorization:{TOKEN}",
    )
    assert "every tool it lists, as `web__<tool>`" in web
    assert "Its header values are stored encrypted and never shown." in web
    listed = await admin(harness, "agent tools claude-1 list")
    assert listed.splitlines() == [
        "*Tool servers of `claude-1`*",
        "• `git · stdio · mcp-server-git --repository /srv/repo · allow git_log, git_status`",
        "• `web · http · https://tools.example/mcp · headers Authorization (values hidden)`",
    ]
    for reply in (added, web, listed):
        assert TOKEN not in reply
    removed = await admin(harness, "agent tools claude-1 remove git")
    assert removed == "Tool server `git` of `claude-1` is removed; its next run goes without it."
    servers = await harness.core.registry.tool_servers.list_tool_servers("claude-1")
    assert [(s.label, s.transport) for s in servers] == [("web", Transport.HTTP)]


@pytest.mark.parametrize(
    ("escaped", "url"),
    [
        ("<https://tools.example/mcp>", "https://tools.example/mcp"),
        ("<https://tools.example/mcp|tools.example/mcp>", "https://tools.example/mcp"),
        (
            "<https://tools.example/mcp?team=a&amp;v=2|https://tools.example/mcp?team=a&amp;v=2>",
            "https://tools.example/mcp?team=a&v=2",
        ),
    ],
)
async def test_a_url_slack_sent_as_a_link_is_added_as_the_plain_url(
    harness: Harness, escaped: str, url: str
) -> None:
    reply = await admin(harness, f"agent tools claude-1 add web http {escaped}")
    assert reply.startswith("Tool server `web` of `claude-1` is added (http).")
    [server] = await harness.core.registry.tool_servers.list_tool_servers("claude-1")
    assert server.url == url


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("agent tools", "`agent tools` needs the agent's name"),
        ("agent tools claude-1", "needs `add`, `remove` or `list`"),
        ("agent tools claude-1 add git stdio mcp-server-git --repository .", "exactly one"),
        ("agent tools claude-1 add git ftp x", "`ftp` is not a transport"),
        ("agent tools claude-1 add web http https://h/mcp header=Broken", "A header is"),
        ("agent tools claude-1 remove nothing-here", "has no tool server `nothing-here`"),
        ("agent tools coder add git stdio x", "`coder` is an external agent"),
        ("agent tools ghost list", "There is no agent named `ghost`"),
    ],
)
async def test_a_mistake_is_named_with_the_usage_and_changes_nothing(
    harness: Harness, text: str, fragment: str
) -> None:
    reply = await admin(harness, text)
    assert reply.startswith(":warning: ")
    assert fragment in reply
    assert USAGE in reply
    assert await harness.core.registry.tool_servers.list_tool_servers("claude-1") == []


async def test_a_refused_header_is_never_echoed(harness: Harness) -> None:
    reply = await admin(harness, f"agent tools claude-1 add web http https://h/mcp header=:{TOKEN}")
    assert reply.startswith(":warning: A header is `header=")
    assert TOKEN not in reply


async def test_someone_who_is_not_an_admin_is_refused_and_nothing_changes(
    harness: Harness,
) -> None:
    reply = await admin(harness, 'agent tools claude-1 add git stdio "mcp-server-git"', user=ALICE)
    assert reply.startswith(":no_entry: `/task-admin` is for threadwork admins")
    assert await harness.core.registry.tool_servers.list_tool_servers("claude-1") == []


async def test_the_admin_help_names_the_tools_commands(harness: Harness) -> None:
    assert "/task-admin agent tools <name> add <label> stdio" in await admin(harness, "help")


async def test_by_default_a_stdio_server_is_refused_saying_which_setting_turns_it_on(
    database_url: str, standin: SlackStandIn, clock: FakeClock
) -> None:
    async for harness in started(database_url, standin, clock):
        reply = await admin(harness, 'agent tools claude-1 add git stdio "mcp-server-git"')
        assert await harness.core.registry.tool_servers.list_tool_servers("claude-1") == []
    assert reply.splitlines()[0] == (
        ":warning: Stdio tool servers are off: each runs a command on threadwork's host, so the "
        "operator lists the commands they may run in THREADWORK_TOOL_SERVER_COMMANDS. To allow "
        "this one, set THREADWORK_TOOL_SERVER_COMMANDS=mcp-server-git in threadwork's environment "
        "(commas between commands, each a name or an absolute path) and restart it."
    )


async def test_a_command_or_host_outside_the_operators_lists_is_refused_and_nothing_changes(
    database_url: str, standin: SlackStandIn, clock: FakeClock
) -> None:
    lists = {"tool_server_commands": ("mcp-server-git",), "tool_server_hosts": ("tools.example",)}
    async for harness in started(database_url, standin, clock, **lists):
        command = await admin(harness, 'agent tools claude-1 add sh stdio "/bin/sh -c id"')
        host = await admin(
            harness,
            f"agent tools claude-1 add web http <https://elsewhere.example/mcp> "
            f"header=Authorization:{TOKEN}",
        )
        assert await harness.core.registry.tool_servers.list_tool_servers("claude-1") == []
    assert command.startswith(
        ":warning: `/bin/sh` is not a command tool servers may run here: "
        "THREADWORK_TOOL_SERVER_COMMANDS lists only `mcp-server-git`."
    )
    assert host.startswith(
        ":warning: `elsewhere.example` is not a host tool servers may be at here: "
        "THREADWORK_TOOL_SERVER_HOSTS lists only `tools.example`."
    )
    assert TOKEN not in host


async def test_the_list_marks_a_server_the_operator_no_longer_permits_as_not_started(
    database_url: str, standin: SlackStandIn, clock: FakeClock
) -> None:
    wide = {"tool_server_commands": ("mcp-server-git", "/opt/mcp/bin/fs")}
    async for harness in started(database_url, standin, clock, **wide):
        await admin(harness, 'agent tools claude-1 add fs stdio "/opt/mcp/bin/fs --root /srv"')
        await admin(harness, 'agent tools claude-1 add git stdio "mcp-server-git"')
    narrowed = {"tool_server_commands": ("mcp-server-git",)}
    async for harness in started(database_url, standin, clock, **narrowed):
        listed = await admin(harness, "agent tools claude-1 list")
    assert listed.splitlines() == [
        "*Tool servers of `claude-1`*",
        "• `fs · stdio · /opt/mcp/bin/fs --root /srv` · :no_entry: not started: /opt/mcp/bin/fs "
        "is not in THREADWORK_TOOL_SERVER_COMMANDS",
        "• `git · stdio · mcp-server-git`",
    ]
