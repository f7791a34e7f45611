"""The commands the presets expand to (the README shows them), and the choice of command."""

import pytest

from channels.agent_cli.presets import (
    GEMINI_SETTINGS,
    MCP_CONFIG,
    MCP_URL,
    PRESETS,
    CommandError,
    Preset,
    choose,
    expand,
)

VALUES = {
    MCP_CONFIG: "/run/w/mcp.json",
    MCP_URL: "http://127.0.0.1:3000/mcp",
    GEMINI_SETTINGS: "/run/w/gemini-settings.json",
}


def test_claude_code_runs_print_mode_with_the_generated_mcp_config() -> None:
    launch = expand(PRESETS["claude-code"], VALUES)
    assert launch.argv == (
        "claude",
        "-p",
        "--mcp-config",
        "/run/w/mcp.json",
        "--permission-mode",
        "acceptEdits",
        "--allowedTools",
        "mcp__threadwork",
        "Bash(git add:*)",
        "Bash(git commit:*)",
    )
    assert launch.env == {}


def test_codex_runs_exec_with_the_server_as_overrides_and_its_token_from_the_environment() -> None:
    launch = expand(PRESETS["codex"], VALUES)
    assert launch.argv == (
        "codex",
        "exec",
        "--sandbox",
        "workspace-write",
        "--skip-git-repo-check",
        "-c",
        'mcp_servers.threadwork.url="http://127.0.0.1:3000/mcp"',
        "-c",
        'mcp_servers.threadwork.bearer_token_env_var="THREADWORK_MCP_TOKEN"',
        "-",
    )


def test_gemini_reads_its_own_settings_file_as_system_defaults() -> None:
    launch = expand(PRESETS["gemini"], VALUES)
    assert launch.argv == ("gemini", "--approval-mode", "auto_edit")
    assert launch.env == {"GEMINI_CLI_SYSTEM_DEFAULTS_PATH": "/run/w/gemini-settings.json"}


def test_a_command_after_dashes_is_run_as_given_with_the_placeholders_filled_in() -> None:
    command = ("my-agent", "--mcp", "{mcp_config}", "--url={mcp_url}", "{other}")
    assert choose(None, command) == Preset(command)
    assert expand(choose(None, command), VALUES).argv == (
        "my-agent",
        "--mcp",
        "/run/w/mcp.json",
        "--url=http://127.0.0.1:3000/mcp",
        "{other}",
    )


@pytest.mark.parametrize(
    ("preset", "command", "says"),
    [
        (None, (), "give a --preset"),
        ("codex", ("codex", "exec"), "not both"),
        ("cursor", (), "there is no preset 'cursor'"),
    ],
)
def test_a_missing_doubled_or_unknown_command_is_refused(
    preset: str | None, command: tuple[str, ...], says: str
) -> None:
    with pytest.raises(CommandError, match=says):
        choose(preset, command)
