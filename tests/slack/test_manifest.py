"""manifest.yml creates an app that matches the code: its commands, events, shortcut and scopes."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from channels.slack.interactive import CREATE_TASK_SHORTCUT

MANIFEST = Path(__file__).parents[2] / "manifest.yml"

#: Each scope and the calls or events in the code that need it; nothing more is asked for.
NEEDED_SCOPES = {
    "app_mentions:read": "app_mention events",
    "assistant:write": "agent sessions: the app is declared an agent (features.agent_view)",
    "channels:history": "message.channels events; conversations.replies/history in public channels",
    "groups:history": "message.groups events; conversations.replies/history in private channels",
    "channels:read": "users.conversations for App Home (public channels)",
    "groups:read": "users.conversations for App Home (private channels)",
    "chat:write": (
        "chat.postMessage, chat.update, chat.postEphemeral, chat.startStream, chat.appendStream, "
        "chat.stopStream, agents.sessions.setStatus"
    ),
    "chat:write.customize": "agents' posts appear under the agent's name and icon",
    "commands": "/task, /task-admin and the message shortcut",
    "users:read": "users.info to recognise workspace admins and owners",
}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    loaded = yaml.safe_load(MANIFEST.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_manifest_asks_for_exactly_the_scopes_the_code_uses(manifest: dict[str, Any]) -> None:
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == sorted(NEEDED_SCOPES)


def test_both_slash_commands_exist_with_escaping_on(manifest: dict[str, Any]) -> None:
    commands = {c["command"]: c for c in manifest["features"]["slash_commands"]}
    assert set(commands) == {"/task", "/task-admin"}
    assert all(c["should_escape"] is True for c in commands.values())
    assert all(c["url"].endswith("/slack/events") for c in commands.values())


def test_the_bot_subscribes_to_the_events_the_listeners_handle(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    assert sorted(settings["event_subscriptions"]["bot_events"]) == [
        "agent_session_stopped",
        "app_home_opened",
        "app_mention",
        "member_joined_channel",
        "member_left_channel",
        "message.channels",
        "message.groups",
    ]
    assert settings["interactivity"]["is_enabled"] is True
    assert settings["socket_mode_enabled"] is False


def test_the_message_shortcut_matches_the_listeners_callback_id(manifest: dict[str, Any]) -> None:
    [shortcut] = manifest["features"]["shortcuts"]
    assert (shortcut["type"], shortcut["callback_id"]) == ("message", CREATE_TASK_SHORTCUT)
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True


def test_the_app_is_declared_an_agent_so_task_threads_are_sessions(
    manifest: dict[str, Any],
) -> None:
    agent_view = manifest["features"]["agent_view"]
    assert set(agent_view) <= {"agent_description", "suggested_prompts", "actions"}
    assert 0 < len(agent_view["agent_description"]) <= 300
