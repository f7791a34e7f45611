"""What a dispatch attempt runs: a preset's usual invocation of a coding-agent CLI, or the
command given after ``--``.

Every command gets the prompt on stdin and the THREADWORK_* environment (``Launch.env``). The
presets add each CLI's own way to reach threadwork's MCP endpoint: Claude Code's print mode
reads the generated ``mcpServers`` file (``--mcp-config``), Codex takes the server as ``-c``
overrides with its bearer token from THREADWORK_MCP_TOKEN, and Gemini CLI reads a settings file
of its own shape as its system defaults. The README shows each preset expanded. A command
given after ``--`` may use the same placeholders (``{mcp_config}``, ``{mcp_url}``,
``{gemini_settings}``); nothing else in it is touched.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: Placeholders a preset's arguments and environment may use.
MCP_CONFIG = "{mcp_config}"
MCP_URL = "{mcp_url}"
GEMINI_SETTINGS = "{gemini_settings}"


@dataclass(frozen=True)
class Preset:
    """A CLI's usual non-interactive invocation, with placeholders."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


PRESETS: Mapping[str, Preset] = {
    # Print mode reads the prompt from stdin; file edits, threadwork's tools and committing are
    # allowed without a prompt (nobody is there to answer one); anything else is refused.
    "claude-code": Preset(
        (
            "claude",
            "-p",
            "--mcp-config",
            MCP_CONFIG,
            "--permission-mode",
            "acceptEdits",
            "--allowedTools",
            "mcp__threadwork",
            "Bash(git add:*)",
            "Bash(git commit:*)",
        )
    ),
    # exec never asks for approval; "-" reads the prompt from stdin. The sandbox lets it write
    # in the working directory only.
    "codex": Preset(
        (
            "codex",
            "exec",
            "--sandbox",
            "workspace-write",
            "--skip-git-repo-check",
            "-c",
            f'mcp_servers.threadwork.url="{MCP_URL}"',
            "-c",
            'mcp_servers.threadwork.bearer_token_env_var="THREADWORK_MCP_TOKEN"',
            "-",
        )
    ),
    # Piped stdin runs it headless; edits are approved, threadwork's server is trusted.
    "gemini": Preset(
        ("gemini", "--approval-mode", "auto_edit"),
        {"GEMINI_CLI_SYSTEM_DEFAULTS_PATH": GEMINI_SETTINGS},
    ),
}


class CommandError(Exception):
    """Neither a preset nor a command, both, or an unknown preset; the message says which."""


@dataclass(frozen=True)
class Launch:
    """The command an attempt runs, and the environment it adds to the worker's own."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def choose(preset: str | None, command: Sequence[str]) -> Preset:
    """The preset named, or the command given after ``--`` taken as is."""
    if preset is not None and command:
        raise CommandError("give a --preset or a command after --, not both.")
    if preset is None:
        if not command:
            raise CommandError(
                f"give a --preset ({', '.join(PRESETS)}) or the command to run after --."
            )
        return Preset(tuple(command))
    if preset not in PRESETS:
        raise CommandError(f"there is no preset {preset!r}; use one of {', '.join(PRESETS)}.")
    return PRESETS[preset]


def expand(preset: Preset, values: Mapping[str, str]) -> Launch:
    """``preset`` with its placeholders filled in from ``values`` (placeholder -> value)."""

    def fill(text: str) -> str:
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        return text

    return Launch(
        tuple(fill(arg) for arg in preset.argv),
        {name: fill(value) for name, value in preset.env.items()},
    )
