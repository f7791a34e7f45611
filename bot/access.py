"""Who may see and change a task: the one authorization check of the core's use cases.

People see a task only while they are members of its channel, and to anyone else a task they
cannot see is answered exactly like a task that does not exist. Changing a task needs the same
membership; closing it (cancel, done, reassigning it away from its agent) is for the task's
creator, its assigner and threadwork admins, unless the channel's policy opens it to every
member. Agents are not people: their calls are gated by the task's claim and epoch instead
(``bot.guards.check_claim``). The service itself and the operator's CLI act as the system.
"""

from collections.abc import Collection
from enum import StrEnum
from typing import Protocol

from bot.errors import NotAllowed, NotFound
from bot.task import Actor, Task


class Membership(Protocol):
    """Which channels a person is a member of, as the chat platform says, kept current by the
    platform's join and leave events."""

    async def is_member(self, user_id: str, channel_id: str) -> bool: ...

    def joined(self, user_id: str, channel_id: str) -> None: ...

    def left(self, user_id: str, channel_id: str) -> None: ...


class AdminList(Protocol):
    """Who is a threadwork admin."""

    async def is_admin(self, user_id: str) -> bool: ...


class AgentIdentities(Protocol):
    """Whether a chat user or bot id is a registered agent's."""

    async def is_agent(self, chat_id: str) -> bool: ...


class NoAgents:
    """No chat identity is an agent's (a core without a chat platform)."""

    async def is_agent(self, chat_id: str) -> bool:
        return False


class Closers(StrEnum):
    """Who may close a task in a channel (cancel, done, reassign away from its agent)."""

    #: The task's creator, its assigner and threadwork admins (the default).
    OWNERS = "owners"
    #: Every member of the channel.
    ANYONE = "anyone"


class EveryoneIsMember:
    """The membership of a core run without a chat platform (the CLI, core tests): there are no
    people there, only the operator."""

    async def is_member(self, user_id: str, channel_id: str) -> bool:
        return True

    def joined(self, user_id: str, channel_id: str) -> None:
        """Nothing to keep: everyone is a member."""

    def left(self, user_id: str, channel_id: str) -> None:
        """Nothing to keep: everyone is a member."""


class ConfiguredAdmins:
    """Admins named by THREADWORK_ADMINS and nobody else."""

    def __init__(self, admins: Collection[str]) -> None:
        self._admins = frozenset(admins)

    async def is_admin(self, user_id: str) -> bool:
        return user_id in self._admins


def hidden(task: Task) -> NotFound:
    """What someone who may not see ``task`` is told: exactly what a missing task says."""
    return NotFound(f"There is no task {task.ref}.")


class Access:
    """Answers whether an actor may read, change or close a task, and refuses otherwise."""

    def __init__(
        self,
        membership: Membership,
        admins: AdminList,
        agents: AgentIdentities | None = None,
    ) -> None:
        self._membership = membership
        self._admins = admins
        self._agents = agents or NoAgents()

    @property
    def membership(self) -> Membership:
        return self._membership

    async def may_read(self, actor: Actor, channel_id: str) -> bool:
        """People read a channel's tasks while they are its members; agents and the system
        are not limited here (agents by their claim, elsewhere)."""
        if actor.kind != "user":
            return True
        return await self._membership.is_member(actor.id, channel_id)

    async def require_read(self, actor: Actor, task: Task) -> None:
        """Raises NotFound, worded as for a missing task, unless ``actor`` may read ``task``."""
        if not await self.may_read(actor, task.channel_id):
            raise hidden(task)

    async def require_person(self, actor: Actor) -> None:
        """Refuses a registered agent acting through the chat platform as if it were a person
        (a slash command or a mention from its Slack user): agents change tasks only through
        their tools, fenced by the claim and the epoch."""
        if actor.kind == "user" and await self._agents.is_agent(actor.id):
            raise NotAllowed(
                "Agents change tasks through their tools (update_task_status and the rest), "
                "not as people; nothing was changed."
            )

    async def require_change(self, actor: Actor, task: Task, in_channel: str | None = None) -> None:
        """Changing needs what reading needs, from a person (not an agent's chat user); a
        card's control must come from the task's own channel (``in_channel``, when the
        request says where it came from)."""
        await self.require_read(actor, task)
        await self.require_person(actor)
        if in_channel is not None and in_channel != task.channel_id:
            raise hidden(task)

    async def require_close(self, actor: Actor, task: Task, closers: Closers) -> None:
        """Closing is for the task's creator, its assigner and admins, or any member when the
        channel's policy says ``anyone``. Call after ``require_change``."""
        if actor.kind != "user" or closers == Closers.ANYONE:
            return
        owners = {task.created_by, str(Actor.user(task.assigned_by or ""))}
        if str(actor) in owners or await self.is_admin(actor):
            return
        raise NotAllowed(
            f"Only the creator of {task.ref}, whoever assigned it, or a threadwork admin can do "
            "that here; an admin can open it to everyone in the channel with "
            "`/task-admin policy closers anyone`."
        )

    async def is_admin(self, actor: Actor) -> bool:
        """Whether ``actor`` is a threadwork admin (the system always is)."""
        if actor.kind == "system":
            return True
        return actor.kind == "user" and await self._admins.is_admin(actor.id)
