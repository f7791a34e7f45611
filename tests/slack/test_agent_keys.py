"""``/task-admin agent add`` over Slack: a re-pointed agent loses its key, and says so."""

from tests.slack.conftest import ADMIN, Harness

KEY = "sk-local-endpoint-key-81f2"


async def admin(service: Harness, text: str) -> str:
    return await service.command(text, command="/task-admin", user=ADMIN)


async def test_re_adding_an_agent_at_another_base_url_discards_its_key_and_says_so(
    service: Harness,
) -> None:
    await admin(service, "agent add local openai base_url=http://127.0.0.1:11434/v1")
    await service.core.registry.set_api_key("local", KEY)
    same = await admin(service, "agent add local openai base_url=http://127.0.0.1:11434/v1 model=q")
    assert "discarded" not in same
    moved = await admin(service, "agent add local openai base_url=https://elsewhere.example/v1")
    assert "Its stored API key was discarded, because its kind or base_url changed" in moved
    assert "/task-admin agent key local" in moved
    assert KEY not in moved
    assert await service.core.registry.get_api_key("local") is None
    listed = await admin(service, "agent list")
    assert "API key set" not in listed


async def test_re_adding_a_disabled_agent_keeps_it_disabled_and_says_so(service: Harness) -> None:
    await admin(service, "agent add helper")
    await admin(service, "agent disable helper")
    reply = await admin(service, "agent add helper display=Helper")
    assert "It stays disabled: `/task-admin agent enable helper`." in reply
    agent = await service.core.registry.get_agent("helper")
    assert agent is not None
    assert agent.enabled is False
