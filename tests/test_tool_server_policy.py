"""The operator's lists of the commands stdio tool servers may run and the hosts http tool
servers may be at: the settings, the matching, and the book refusing an add outside them
(changing nothing) and keeping a stored server they no longer permit from starting, on SQLite
and PostgreSQL."""

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.agents import AgentKind
from bot.errors import InvalidInput, NotAllowed
from bot.root import Core, Overrides, open_core
from bot.settings import Settings, SettingsError, load_settings
from bot.task import Actor
from bot.tool_server_policy import ToolServerPolicy
from bot.tool_servers import ToolServer, ToolServerAdd, Transport, parse_request
from store.schema import agent_secrets, agent_tool_servers
from tests.conftest import TEST_SECRET_KEY, FakeClock

OPERATOR = Actor.system("test")
AGENT = "claude-1"


def adding(*words: str) -> ToolServerAdd:
    request = parse_request(["add", *words])
    assert isinstance(request, ToolServerAdd)
    return request


def denial_note(policy: ToolServerPolicy, *words: str) -> str | None:
    denial = policy.denial(adding(*words).server)
    return None if denial is None else denial.note


# -- the settings -----------------------------------------------------------------------------


def test_both_lists_are_empty_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THREADWORK_TOOL_SERVER_COMMANDS", raising=False)
    monkeypatch.delenv("THREADWORK_TOOL_SERVER_HOSTS", raising=False)
    settings = load_settings()
    assert (settings.tool_server_commands, settings.tool_server_hosts) == ((), ())


def test_the_lists_are_comma_separated_names_paths_and_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("THREADWORK_TOOL_SERVER_COMMANDS", " mcp-server-git, /opt/mcp/bin/fs ,")
    monkeypatch.setenv("THREADWORK_TOOL_SERVER_HOSTS", "Tools.Example.com, 127.0.0.1:8931")
    settings = load_settings()
    assert settings.tool_server_commands == ("mcp-server-git", "/opt/mcp/bin/fs")
    assert settings.tool_server_hosts == ("tools.example.com", "127.0.0.1:8931")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("THREADWORK_TOOL_SERVER_COMMANDS", "bin/mcp-server-git"),
        ("THREADWORK_TOOL_SERVER_COMMANDS", "./mcp-server-git"),
        ("THREADWORK_TOOL_SERVER_COMMANDS", "~/bin/mcp-server-git"),
        ("THREADWORK_TOOL_SERVER_COMMANDS", "/opt/mcp/../bin/sh"),
        ("THREADWORK_TOOL_SERVER_COMMANDS", "mcp-server-git --repository /"),
        ("THREADWORK_TOOL_SERVER_HOSTS", "https://tools.example.com"),
        ("THREADWORK_TOOL_SERVER_HOSTS", "tools.example.com/mcp"),
        ("THREADWORK_TOOL_SERVER_HOSTS", "tools example"),
    ],
)
def test_a_bad_list_stops_start_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message


# -- the matching -----------------------------------------------------------------------------


def test_with_no_commands_listed_every_stdio_server_is_refused() -> None:
    assert denial_note(ToolServerPolicy(), "git", "stdio", "mcp-server-git") == (
        "stdio tool servers are off (THREADWORK_TOOL_SERVER_COMMANDS is empty)"
    )


@pytest.mark.parametrize(
    ("command", "permitted"),
    [
        ("mcp-server-git --repository /srv/repo", True),
        ("/opt/mcp/bin/fs --root /srv", True),
        ("/usr/local/bin/mcp-server-git", False),  # a name listed is matched only typed bare
        ("fs", False),  # an absolute path listed is matched only as that path
        ("mcp-server-gitx", False),
        ("sh -c 'mcp-server-git'", False),  # only the first word is the executable
    ],
)
def test_a_command_is_matched_by_its_first_word_exactly_by_name_or_absolute_path(
    command: str, permitted: bool
) -> None:
    policy = ToolServerPolicy(commands=frozenset({"mcp-server-git", "/opt/mcp/bin/fs"}))
    note = denial_note(policy, "tool", "stdio", command)
    if permitted:
        assert note is None
    else:
        assert note == f"{command.split()[0]} is not in THREADWORK_TOOL_SERVER_COMMANDS"


def test_a_relative_command_path_is_refused_as_input() -> None:
    with pytest.raises(InvalidInput, match="`bin/mcp-server-git` is a relative path"):
        adding("git", "stdio", "bin/mcp-server-git")


@pytest.mark.parametrize(
    ("url", "note"),
    [
        ("https://tools.example.com/mcp", None),
        ("https://10.0.0.7:8443/mcp", None),
        ("http://localhost:8931/mcp", None),
        ("http://127.0.0.1:8931/mcp", None),
        ("http://[::1]:8931/mcp", None),
        (
            "http://tools.example.com/mcp",
            "plain http to tools.example.com is off "
            "(THREADWORK_TOOL_SERVER_HOSTS is empty: https only)",
        ),
        (
            "http://localhost.example.com:8931/mcp",
            "plain http to localhost.example.com:8931 is off "
            "(THREADWORK_TOOL_SERVER_HOSTS is empty: https only)",
        ),
    ],
)
def test_with_no_hosts_listed_any_https_host_and_plain_http_only_on_loopback(
    url: str, note: str | None
) -> None:
    assert denial_note(ToolServerPolicy(), "web", "http", url) == note


@pytest.mark.parametrize(
    ("url", "permitted"),
    [
        ("https://tools.example.com/mcp", True),
        ("https://tools.example.com:9443/mcp", True),  # a name listed: any port
        ("http://tools.example.com/mcp", True),  # a host listed: http too, the operator's say
        ("https://api.example.com/mcp", True),  # listed as api.example.com:443
        ("https://api.example.com:443/mcp", True),
        ("https://api.example.com:8443/mcp", False),  # name:port: that port only
        ("http://api.example.com/mcp", False),  # port 80
        ("http://[::1]:8931/mcp", True),
        ("http://[::1]:8932/mcp", False),
        ("https://localhost/mcp", False),  # with a list, loopback is not special
        ("https://evil.tools.example.com/mcp", False),
    ],
)
def test_with_hosts_listed_a_url_must_be_at_one_of_them_on_the_port_listed(
    url: str, permitted: bool
) -> None:
    hosts = frozenset({"tools.example.com", "api.example.com:443", "[::1]:8931"})
    note = denial_note(ToolServerPolicy(hosts=hosts), "web", "http", url)
    assert (note is None) is permitted
    if not permitted:
        assert note is not None
        assert note.endswith("is not in THREADWORK_TOOL_SERVER_HOSTS")


@pytest.mark.parametrize("url", ["https://h:99999/mcp", "https://h:0/mcp", "https://h:x/mcp"])
def test_a_url_with_a_bad_port_is_refused_as_input(url: str) -> None:
    with pytest.raises(InvalidInput, match="port must be a number from 1 to 65535"):
        adding("web", "http", url)


def test_a_stored_url_with_a_bad_port_is_denied_by_a_list_not_a_crash() -> None:
    server = ToolServer("web", Transport.HTTP, url="https://tools.example.com:99999/mcp")
    denial = ToolServerPolicy(hosts=frozenset({"tools.example.com:443"})).denial(server)
    assert denial is not None
    assert denial.note == "tools.example.com:0 is not in THREADWORK_TOOL_SERVER_HOSTS"


# -- the book ---------------------------------------------------------------------------------


def policy_settings(database_url: str, **variables: str) -> Settings:
    return Settings(DATABASE_URL=database_url, THREADWORK_SECRET_KEY=TEST_SECRET_KEY, **variables)


@pytest.fixture
async def claude(database_url: str, clock: FakeClock) -> AsyncIterator[Core]:
    """The core as the defaults build it (no commands, no hosts), with a built-in agent."""
    async with open_core(policy_settings(database_url), Overrides(clock=clock)) as core:
        await core.registry.add_agent(AGENT, AgentKind.CLAUDE)
        yield core


async def stored(engine: AsyncEngine) -> tuple[list[object], list[object]]:
    async with engine.connect() as conn:
        servers = list((await conn.execute(select(agent_tool_servers))).all())
        secrets = list((await conn.execute(select(agent_secrets))).all())
    return servers, secrets


async def test_by_default_a_stdio_server_is_refused_saying_how_to_allow_it_and_nothing_is_stored(
    claude: Core,
) -> None:
    with pytest.raises(NotAllowed) as refused:
        await claude.admin.add_tool_server(
            OPERATOR, AGENT, adding("git", "stdio", "mcp-server-git --repository /srv/repo")
        )
    assert refused.value.message == (
        "Stdio tool servers are off: each runs a command on threadwork's host, so the operator "
        "lists the commands they may run in THREADWORK_TOOL_SERVER_COMMANDS. To allow this one, "
        "set THREADWORK_TOOL_SERVER_COMMANDS=mcp-server-git in threadwork's environment (commas "
        "between commands, each a name or an absolute path) and restart it."
    )
    assert await stored(claude.engine) == ([], [])


async def test_an_add_outside_the_lists_is_refused_naming_the_setting_and_nothing_is_stored(
    database_url: str, clock: FakeClock
) -> None:
    settings = policy_settings(
        database_url,
        THREADWORK_TOOL_SERVER_COMMANDS="mcp-server-git",
        THREADWORK_TOOL_SERVER_HOSTS="tools.example.com",
    )
    async with open_core(settings, Overrides(clock=clock)) as core:
        await core.registry.add_agent(AGENT, AgentKind.CLAUDE)
        with pytest.raises(NotAllowed) as command:
            await core.admin.add_tool_server(OPERATOR, AGENT, adding("sh", "stdio", "sh -c id"))
        secret = "header=Authorization:Bearer_secret-value-77"
        with pytest.raises(NotAllowed) as host:
            await core.admin.add_tool_server(
                OPERATOR, AGENT, adding("web", "http", "https://elsewhere.example/mcp", secret)
            )
        assert await stored(core.engine) == ([], [])
    assert command.value.message == (
        "`sh` is not a command tool servers may run here: THREADWORK_TOOL_SERVER_COMMANDS lists "
        "only `mcp-server-git`. To allow it, the operator adds `sh` to "
        "THREADWORK_TOOL_SERVER_COMMANDS and restarts threadwork."
    )
    assert host.value.message == (
        "`elsewhere.example` is not a host tool servers may be at here: "
        "THREADWORK_TOOL_SERVER_HOSTS lists only `tools.example.com`. To allow it, the operator "
        "adds `elsewhere.example` to THREADWORK_TOOL_SERVER_HOSTS and restarts threadwork."
    )
    assert "secret-value-77" not in host.value.message


async def test_by_default_plain_http_off_this_machine_is_refused_and_https_is_added(
    claude: Core,
) -> None:
    with pytest.raises(NotAllowed, match="Use an https URL, or the operator lists the host"):
        await claude.admin.add_tool_server(
            OPERATOR, AGENT, adding("web", "http", "http://tools.example.com/mcp")
        )
    for label, url in (("web", "https://tools.example.com/mcp"), ("local", "http://[::1]:8/mcp")):
        await claude.admin.add_tool_server(OPERATOR, AGENT, adding(label, "http", url))
    listed = await claude.admin.list_tool_servers(OPERATOR, AGENT)
    assert [(s.label, s.url, s.denied) for s in listed] == [
        ("local", "http://[::1]:8/mcp", None),
        ("web", "https://tools.example.com/mcp", None),
    ]


async def test_a_server_the_operator_no_longer_permits_is_listed_so_and_not_started(
    database_url: str, clock: FakeClock
) -> None:
    wide = policy_settings(
        database_url,
        THREADWORK_TOOL_SERVER_COMMANDS="mcp-server-git,/opt/mcp/bin/fs",
        THREADWORK_TOOL_SERVER_HOSTS="tools.example.com,other.example",
    )
    async with open_core(wide, Overrides(clock=clock)) as before:
        await before.registry.add_agent(AGENT, AgentKind.CLAUDE)
        for words in (
            ("fs", "stdio", "/opt/mcp/bin/fs"),
            ("git", "stdio", "mcp-server-git"),
            ("other", "http", "https://other.example/mcp"),
            ("web", "http", "https://tools.example.com/mcp"),
        ):
            await before.admin.add_tool_server(OPERATOR, AGENT, adding(*words))
    narrowed = policy_settings(
        database_url,
        THREADWORK_TOOL_SERVER_COMMANDS="mcp-server-git",
        THREADWORK_TOOL_SERVER_HOSTS="tools.example.com",
    )
    async with open_core(narrowed, Overrides(clock=clock)) as after:
        listed = await after.admin.list_tool_servers(OPERATOR, AGENT)
        launches = await after.registry.tool_servers.launches(AGENT)
    assert [(s.label, s.denied) for s in listed] == [
        ("fs", "/opt/mcp/bin/fs is not in THREADWORK_TOOL_SERVER_COMMANDS"),
        ("git", None),
        ("other", "other.example is not in THREADWORK_TOOL_SERVER_HOSTS"),
        ("web", None),
    ]
    assert [(launch.server.label, launch.problem) for launch in launches] == [
        (
            "fs",
            "the operator does not permit it: /opt/mcp/bin/fs is not in "
            "THREADWORK_TOOL_SERVER_COMMANDS",
        ),
        ("git", None),
        (
            "other",
            "the operator does not permit it: other.example is not in THREADWORK_TOOL_SERVER_HOSTS",
        ),
        ("web", None),
    ]
