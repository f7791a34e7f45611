"""The admins' desk: every admin use case refuses anyone who is not an admin, in the core."""

from collections.abc import Awaitable, Callable

import pytest

from bot.access import Closers
from bot.admin import AdminDesk
from bot.agents import AgentKind, AgentSettings
from bot.errors import NotAllowed
from bot.root import Core
from bot.task import Actor

PERSON = Actor.user("U_SOMEONE")
OPERATOR = Actor.system("cli")

CALLS: dict[str, Callable[[AdminDesk, Actor], Awaitable[object]]] = {
    "register_agent": lambda d, by: d.register_agent(
        by, "rogue", AgentKind.EXTERNAL, None, None, None, AgentSettings()
    ),
    "list_agents": lambda d, by: d.list_agents(by),
    "remove_agent": lambda d, by: d.remove_agent(by, "coder"),
    "disable": lambda d, by: d.set_enabled(by, "coder", False),
    "issue_token": lambda d, by: d.issue_token(by, "coder"),
    "revoke_tokens": lambda d, by: d.revoke_tokens(by, "coder"),
    "policy": lambda d, by: d.set_channel_policy(by, "C1", closers=Closers.ANYONE),
    "reconcile": lambda d, by: d.reconcile(by),
    "stats": lambda d, by: d.board_stats(by),
    "outbox": lambda d, by: d.review_outbox(by),
}


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_an_admin_use_case_refuses_a_person_who_is_not_an_admin_and_changes_nothing(
    core: Core, name: str
) -> None:
    await core.registry.add_agent("coder")
    with pytest.raises(NotAllowed, match="is for threadwork admins"):
        await CALLS[name](core.admin, PERSON)
    agents = await core.registry.list_agents()
    assert [(a.name, a.enabled) for a in agents] == [("coder", True)]
    assert (await core.channel_policies.policies()).channels == {}


async def test_the_operator_is_an_admin(core: Core) -> None:
    registration = await CALLS["register_agent"](core.admin, OPERATOR)
    assert registration is not None
    assert [a.name for a in await core.admin.list_agents(OPERATOR)] == ["rogue"]
