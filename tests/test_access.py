"""The core's authorization under a race: a change checked against one state is not written
over another."""

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bot.errors import Conflict
from bot.root import Core, Overrides, open_core
from bot.task import Actor
from tests.conftest import FakeClock, SequentialKeys, core_settings

OWNER, MEMBER = "U_OWNER", "U_MEMBER"


class MembershipThatWaits:
    """Everyone is a member; checking ``MEMBER`` first runs ``meanwhile`` (once)."""

    def __init__(self) -> None:
        self.meanwhile: Callable[[], Awaitable[object]] | None = None

    async def is_member(self, user_id: str, channel_id: str) -> bool:
        if user_id == MEMBER and self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            await run()
        return True

    def joined(self, user_id: str, channel_id: str) -> None: ...

    def left(self, user_id: str, channel_id: str) -> None: ...


@pytest.fixture
async def racing(
    database_url: str, clock: FakeClock, keys: SequentialKeys
) -> AsyncIterator[tuple[Core, MembershipThatWaits]]:
    membership = MembershipThatWaits()
    overrides = Overrides(clock=clock, new_key=keys, membership=membership)
    async with open_core(core_settings(database_url), overrides) as core:
        await core.registry.add_agent("coder")
        await core.registry.add_agent("reviewer")
        yield core, membership


async def test_a_change_checked_on_a_task_that_moves_on_meanwhile_is_refused(
    racing: tuple[Core, MembershipThatWaits],
) -> None:
    core, membership = racing
    task = await core.board.create_task("C1", "Contended", Actor.user(OWNER))

    async def owner_assigns_it() -> None:
        await core.board.assign_task(task.ref, "reviewer", OWNER)

    membership.meanwhile = owner_assigns_it
    # The member's assign was checked on the unassigned task (no closing rights needed), but
    # by the time it writes, the owner gave the task to reviewer: taking it away now would
    # need closing rights, so the write is refused instead of trusting the stale check.
    with pytest.raises(Conflict, match="changed while this was being done"):
        await core.board.assign_task(task.ref, "coder", MEMBER)
    async with core.store.read() as reader:
        current = await reader.get_task(task.ref)
    assert current is not None
    assert (current.assignee, current.assigned_by) == ("reviewer", OWNER)
