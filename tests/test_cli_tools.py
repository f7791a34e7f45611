"""``threadwork agents tools``, run as a real subprocess, on SQLite and PostgreSQL: the same
grammar as ``/task-admin agent tools``, header values never printed, mistakes with the usage."""

from pathlib import Path

import pytest

from bot.agents import AgentKind
from bot.root import Overrides, open_core
from bot.settings import Settings
from tests.conftest import FakeClock
from tests.test_cli import SECRET_KEY, Result, assert_one_error_line, clean_env, threadwork

TOKEN = "ghp_cli-header-secret-0d7b"


@pytest.fixture
async def env(tmp_path: Path, database_url: str, clock: FakeClock) -> dict[str, str]:
    """The CLI's environment, with a built-in agent ``claude-1`` registered."""
    settings = Settings(DATABASE_URL=database_url, THREADWORK_SECRET_KEY=SECRET_KEY)
    async with open_core(settings, Overrides(clock=clock)) as core:
        await core.registry.add_agent("claude-1", AgentKind.CLAUDE)
    return clean_env(tmp_path, database_url) | {
        "THREADWORK_SECRET_KEY": SECRET_KEY,
        "THREADWORK_TOOL_SERVER_COMMANDS": "mcp-server-git",
    }


async def tools(env: dict[str, str], *words: str) -> Result:
    return await threadwork("agents", "tools", *words, env=env)


def assert_printed(result: Result, stdout: str) -> None:
    assert (result.code, result.stdout, result.stderr) == (0, stdout, ""), result


async def test_servers_are_added_listed_and_removed_and_header_values_never_printed(
    env: dict[str, str],
) -> None:
    git = await tools(
        env, "claude-1", "add", "git", "stdio", "mcp-server-git --repository /srv/repo",
        "allow=git_log",
    )  # fmt: skip
    assert_printed(git, "tool server git added for claude-1 (stdio)\n")
    web = await tools(
        env, "claude-1", "add", "web", "http", "https://tools.example/mcp",
        f"header=Authorization:{TOKEN}",
    )  # fmt: skip
    assert_printed(web, "tool server web added for claude-1 (http)\n")
    listed = await tools(env, "claude-1", "list")
    assert_printed(
        listed,
        "git · stdio · mcp-server-git --repository /srv/repo · allow git_log\n"
        "web · http · https://tools.example/mcp · headers Authorization (values hidden)\n",
    )
    removed = await tools(env, "claude-1", "remove", "git")
    assert_printed(removed, "tool server git removed from claude-1\n")
    after = await tools(env, "claude-1", "list")
    assert after.stdout.startswith("web · http")
    for run in (git, web, listed, removed, after):
        assert TOKEN not in run.stdout + run.stderr


async def test_a_mistake_names_what_is_wrong_with_the_usage_and_exits_2(
    env: dict[str, str],
) -> None:
    result = await tools(env, "claude-1", "add", "git", "stdio")
    assert (result.code, result.stdout) == (2, "")
    first, usage, *commands = result.stderr.splitlines()
    assert first == (
        'error: Give exactly one command or URL after the transport: `stdio "<command> <args>"` '
        "(the command in quotes)."
    )
    assert usage == "usage:"
    assert [c.split(" <name> ")[1].split()[0] for c in commands] == ["add", "remove", "list"]
    assert all(c.startswith("threadwork agents tools <name> ") for c in commands)
    assert (await tools(env, "claude-1", "list")).stdout == "claude-1 has no tool servers\n"


async def test_an_unknown_agent_or_label_is_one_error_line(env: dict[str, str]) -> None:
    assert_one_error_line(await tools(env, "ghost", "list"), 1, "no agent named `ghost`")
    assert_one_error_line(
        await tools(env, "claude-1", "remove", "git"), 1, "`claude-1` has no tool server `git`"
    )


async def test_a_bad_server_limit_stops_the_command_with_one_line_naming_it(
    env: dict[str, str],
) -> None:
    result = await tools(env | {"THREADWORK_AGENT_TOOL_SERVERS": "0"}, "claude-1", "list")
    assert_one_error_line(result, 2, "THREADWORK_AGENT_TOOL_SERVERS")


async def test_a_server_outside_the_operators_lists_is_one_error_line_naming_the_setting(
    env: dict[str, str],
) -> None:
    stdio_off = {k: v for k, v in env.items() if k != "THREADWORK_TOOL_SERVER_COMMANDS"}
    off = await tools(stdio_off, "claude-1", "add", "git", "stdio", "mcp-server-git")
    assert_one_error_line(
        off, 1, "Stdio tool servers are off", "set THREADWORK_TOOL_SERVER_COMMANDS=mcp-server-git"
    )
    elsewhere = env | {"THREADWORK_TOOL_SERVER_HOSTS": "tools.example.com"}
    host = await tools(elsewhere, "claude-1", "add", "web", "http", "https://other.example/mcp")
    assert_one_error_line(host, 1, "`other.example` is not a host", "THREADWORK_TOOL_SERVER_HOSTS")
    assert (await tools(env, "claude-1", "list")).stdout == "claude-1 has no tool servers\n"


async def test_the_list_marks_a_server_the_operator_no_longer_permits_as_not_started(
    env: dict[str, str],
) -> None:
    assert (await tools(env, "claude-1", "add", "git", "stdio", "mcp-server-git")).code == 0
    narrowed = env | {"THREADWORK_TOOL_SERVER_COMMANDS": "/usr/local/bin/mcp-server-git"}
    assert_printed(
        await tools(narrowed, "claude-1", "list"),
        "git · stdio · mcp-server-git · not started: mcp-server-git is not in "
        "THREADWORK_TOOL_SERVER_COMMANDS\n",
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("THREADWORK_TOOL_SERVER_COMMANDS", "bin/server"), ("THREADWORK_TOOL_SERVER_HOSTS", "a b")],
)
async def test_a_bad_list_stops_the_command_with_one_line_naming_it(
    env: dict[str, str], variable: str, value: str
) -> None:
    result = await tools(env | {variable: value}, "claude-1", "list")
    assert_one_error_line(result, 2, f"{variable}: ")
