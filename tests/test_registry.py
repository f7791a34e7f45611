"""The agents registry: settings and encrypted keys survive restarts and never leak."""

import json
import logging
import re

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
from tests.conftest import TEST_SECRET_KEY, FakeClock, core_settings

SECRET = "sk-ant-test-0123456789-very-secret"
OTHER_SECRET_KEY = "yO_fwUWa3K-UzPnQ4IrMwIAWVo911YB7Qe_OyFYQif4="


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
    other_key = restart.model_copy(update={"secret_key": SecretStr(OTHER_SECRET_KEY)})
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
    assert TEST_SECRET_KEY not in repr(SecretBox(TEST_SECRET_KEY))


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


async def test_re_registering_a_disabled_agent_leaves_it_disabled(registry: AgentRegistry) -> None:
    await registry.add_agent("cursor-bot", display_name="Cursor")
    await registry.set_enabled("cursor-bot", False)
    again = await registry.add_agent("cursor-bot", display_name="Cursor again")
    assert (again.display_name, again.enabled) == ("Cursor again", False)
    stored = await registry.get_agent("cursor-bot")
    assert stored is not None
    assert stored.enabled is False


async def test_disabling_an_agent_revokes_its_tokens_for_good(registry: AgentRegistry) -> None:
    await registry.add_agent("cursor-bot")
    token = await registry.issue_token("cursor-bot")
    assert await registry.agent_for_token(token) is not None
    await registry.set_enabled("cursor-bot", False)
    await registry.add_agent("cursor-bot")  # re-registering does not enable it either
    await registry.set_enabled("cursor-bot", True)
    assert await registry.agent_for_token(token) is None
    assert await registry.revoke_tokens("cursor-bot") == 0
    fresh = await registry.issue_token("cursor-bot")
    assert await registry.agent_for_token(fresh) is not None


@pytest.mark.parametrize(
    ("kind", "base_url"),
    [
        (AgentKind.OPENAI, "http://127.0.0.1:9/v1"),
        (AgentKind.CLAUDE, None),
        (AgentKind.EXTERNAL, None),
    ],
    ids=["new-base-url", "new-kind", "made-external"],
)
async def test_changing_an_agents_kind_or_endpoint_discards_its_key(
    registry: AgentRegistry, kind: AgentKind, base_url: str | None
) -> None:
    trusted = AgentSettings(base_url="http://127.0.0.1:11434/v1")
    await registry.add_agent("local", AgentKind.OPENAI, settings=trusted)
    await registry.set_api_key("local", SECRET)
    moved = await registry.register_agent("local", kind, settings=AgentSettings(base_url=base_url))
    assert moved.key_discarded is True
    assert moved.agent.api_key_configured is False
    assert await registry.get_api_key("local") is None


async def test_re_registering_with_the_same_kind_and_endpoint_keeps_the_key(
    registry: AgentRegistry,
) -> None:
    endpoint = AgentSettings(base_url="http://127.0.0.1:11434/v1", model="qwen")
    await registry.add_agent("local", AgentKind.OPENAI, settings=endpoint)
    await registry.set_api_key("local", SECRET)
    renamed = AgentSettings(base_url="http://127.0.0.1:11434/v1", model="qwen-2")
    kept = await registry.register_agent("local", AgentKind.OPENAI, "Local 2", settings=renamed)
    assert (kept.key_discarded, kept.agent.api_key_configured) == (False, True)
    assert await registry.get_api_key("local") == SECRET
    assert (await registry.register_agent("fresh", AgentKind.OPENAI)).key_discarded is False


async def test_with_model_hosts_set_an_endpoint_elsewhere_cannot_be_registered(
    database_url: str,
) -> None:
    settings = core_settings(database_url).model_copy(update={"model_hosts": ("127.0.0.1:11434",)})
    async with open_core(settings) as core:
        allowed = AgentSettings(base_url="http://127.0.0.1:11434/v1")
        await core.registry.add_agent("local", AgentKind.OPENAI, settings=allowed)
        elsewhere = AgentSettings(base_url="https://models.evil.example/v1")
        with pytest.raises(
            InvalidInput, match=re.escape("THREADWORK_MODEL_HOSTS allows only 127.0.0.1:11434")
        ):
            await core.registry.add_agent("local", AgentKind.OPENAI, settings=elsewhere)
        with pytest.raises(InvalidInput, match="http"):
            await core.registry.add_agent(
                "local", AgentKind.OPENAI, settings=AgentSettings(base_url="file:///etc")
            )
        [agent] = await core.registry.list_agents()
        assert agent.settings.base_url == "http://127.0.0.1:11434/v1"


async def test_a_model_endpoint_with_credentials_in_it_is_refused(registry: AgentRegistry) -> None:
    settings = AgentSettings(base_url="https://user:hunter2@models.example/v1")
    with pytest.raises(InvalidInput, match="must not carry credentials") as refused:
        await registry.add_agent("local", AgentKind.OPENAI, settings=settings)
    assert "hunter2" not in str(refused.value)
    assert [a.name for a in await registry.list_agents()] == []
