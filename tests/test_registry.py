"""The agents registry: settings and encrypted keys survive restarts and never leak."""

import json
import logging

import pytest
import structlog
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.agents import AgentKind, AgentSettings
from bot.errors import ConfigurationError, InvalidInput, NotFound
from bot.registry import AgentRegistry
from bot.root import open_core
from bot.secrets import SecretBox
from bot.views import agent_view
from store.schema import agent_secrets
from tests.conftest import FakeClock, core_settings

SECRET = "sk-ant-test-0123456789-very-secret"


async def test_an_agent_is_registered_with_its_settings_and_listed_by_name(
    registry: AgentRegistry,
) -> None:
    await registry.add_agent("Zed", display_name="Zed the Builder", slack_user_id="U_ZED")
    await registry.add_agent(
        "claude-1",
        AgentKind.CLAUDE,
        settings=AgentSettings(model="claude-x", system_prompt="Be brief."),
    )
    agents = await registry.list_agents()
    assert [a.name for a in agents] == ["claude-1", "zed"]
    claude, zed = agents
    assert (claude.kind, claude.settings.model, claude.settings.system_prompt) == (
        AgentKind.CLAUDE,
        "claude-x",
        "Be brief.",
    )
    assert (zed.display_name, zed.slack_user_id, zed.enabled) == ("Zed the Builder", "U_ZED", True)


async def test_a_bad_name_or_unknown_agent_is_refused(registry: AgentRegistry) -> None:
    with pytest.raises(InvalidInput, match="not a valid agent name"):
        await registry.add_agent("has spaces")
    with pytest.raises(NotFound):
        await registry.remove_agent("ghost")
    with pytest.raises(NotFound):
        await registry.set_api_key("ghost", SECRET)
    with pytest.raises(InvalidInput, match="empty"):
        await registry.set_api_key("ghost", "  ")


async def test_a_key_is_stored_encrypted_and_survives_a_restart(
    database_url: str, registry: AgentRegistry, engine: AsyncEngine, clock: FakeClock
) -> None:
    await registry.add_agent("claude-1", AgentKind.CLAUDE)
    await registry.set_api_key("claude-1", SECRET)

    async with engine.connect() as conn:
        stored = (await conn.execute(select(agent_secrets.c.ciphertext))).scalar_one()
    assert SECRET.encode() not in bytes(stored)

    restart = core_settings(database_url)
    other_key = restart.model_copy(update={"secret_key": SecretStr("another-key")})
    async with open_core(restart) as again, open_core(other_key) as wrong:
        assert await again.registry.get_api_key("claude-1") == SECRET
        [agent] = await again.registry.list_agents()
        assert agent.api_key_configured is True
        with pytest.raises(ConfigurationError, match="THREADWORK_SECRET_KEY differs"):
            await wrong.registry.get_api_key("claude-1")


async def test_a_key_appears_in_no_log_and_no_view(
    registry: AgentRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as captured:
        await registry.add_agent("claude-1", AgentKind.CLAUDE)
        await registry.set_api_key("claude-1", SECRET)
        views = [agent_view(a) for a in await registry.list_agents()]
    assert views[0]["api_key_configured"] is True
    assert SECRET not in json.dumps(views)
    assert SECRET not in caplog.text
    assert SECRET not in repr(captured)
    assert "test-secret-key" not in repr(SecretBox("test-secret-key"))


async def test_removing_an_agent_removes_its_key(
    registry: AgentRegistry, engine: AsyncEngine
) -> None:
    await registry.add_agent("claude-1", AgentKind.CLAUDE)
    await registry.set_api_key("claude-1", SECRET)
    await registry.remove_agent("claude-1")
    assert await registry.list_agents() == []
    async with engine.connect() as conn:
        assert (await conn.execute(select(agent_secrets))).all() == []


def test_a_secret_box_needs_a_key() -> None:
    with pytest.raises(ConfigurationError, match="THREADWORK_SECRET_KEY is not set"):
        SecretBox("")
