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


@pytest.fixture
async def harness(
    database_url: str, standin: SlackStandIn, clock: FakeClock
) -> AsyncIterator[Harness]:
    async for harness in start_service(database_url, standin, clock):
        await harness.core.registry.add_agent("claude-1", AgentKind.CLAUDE)
        await harness.core.registry.add_agent("coder", slack_user_id="UCODER01")
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
