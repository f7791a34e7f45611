"""The admins' use cases, each refused to anyone who is not a threadwork admin.

Front doors for people (Slack's ``/task-admin`` and its forms) reach agents, channel policy, the
reconcile on demand, stats and the outbox only through this desk, so who may do these things is
decided here, in the core, once. The operator's CLI acts as the system, which is an admin.
"""

from bot.access import Access, Closers
from bot.agents import Agent, AgentKind, AgentSettings
from bot.channel_policies import ChannelPolicies
from bot.dead_letters import DeadLetters, OutboxReview
from bot.errors import NotAllowed
from bot.outbox import OutboxRow
from bot.policy import PolicyBook
from bot.queries import BoardStats, TaskQueries
from bot.reconcile import Reconciler, ReconcileReport
from bot.registry import AgentRegistry, Registration
from bot.task import Actor, Task
from bot.tool_servers import ToolServer, ToolServerAdd

ADMINS_ONLY = (
    "`/task-admin` is for threadwork admins (THREADWORK_ADMINS, and the workspace's admins and "
    "owners when THREADWORK_WORKSPACE_ADMINS=1). Nothing was changed."
)


class AdminDesk:
    """Agents, policy, reconcile, stats and the outbox, for admins; each call names its caller."""

    def __init__(
        self,
        access: Access,
        registry: AgentRegistry,
        channel_policies: ChannelPolicies,
        reconciler: Reconciler,
        queries: TaskQueries,
        dead_letters: DeadLetters,
    ) -> None:
        self._access = access
        self._registry = registry
        self._channel_policies = channel_policies
        self._reconciler = reconciler
        self._queries = queries
        self._dead_letters = dead_letters

    async def require_admin(self, by: Actor) -> None:
        """Raises NotAllowed unless ``by`` is a threadwork admin."""
        if not await self._access.is_admin(by):
            raise NotAllowed(ADMINS_ONLY)

    async def register_agent(
        self,
        by: Actor,
        name: str,
        kind: AgentKind,
        display_name: str | None,
        slack_user_id: str | None,
        slack_bot_id: str | None,
        settings: AgentSettings,
    ) -> Registration:
        await self.require_admin(by)
        return await self._registry.register_agent(
            name, kind, display_name, slack_user_id, slack_bot_id, settings
        )

    async def list_agents(self, by: Actor) -> list[Agent]:
        await self.require_admin(by)
        return await self._registry.list_agents()

    async def get_agent(self, by: Actor, name: str) -> Agent | None:
        await self.require_admin(by)
        return await self._registry.get_agent(name)

    async def remove_agent(self, by: Actor, name: str) -> None:
        await self.require_admin(by)
        await self._registry.remove_agent(name)

    async def set_enabled(self, by: Actor, name: str, enabled: bool) -> list[Task]:
        await self.require_admin(by)
        return await self._registry.set_enabled(name, enabled)

    async def set_api_key(self, by: Actor, name: str, api_key: str) -> None:
        await self.require_admin(by)
        await self._registry.set_api_key(name, api_key)

    async def issue_token(self, by: Actor, name: str) -> str:
        await self.require_admin(by)
        return await self._registry.issue_token(name)

    async def revoke_tokens(self, by: Actor, name: str) -> int:
        await self.require_admin(by)
        return await self._registry.revoke_tokens(name)

    async def add_tool_server(self, by: Actor, name: str, added: ToolServerAdd) -> bool:
        """Gives built-in agent ``name`` a tool server; True when it replaced one."""
        await self.require_admin(by)
        return await self._registry.tool_servers.add_tool_server(name, added)

    async def remove_tool_server(self, by: Actor, name: str, label: str) -> None:
        await self.require_admin(by)
        await self._registry.tool_servers.remove_tool_server(name, label)

    async def list_tool_servers(self, by: Actor, name: str) -> list[ToolServer]:
        await self.require_admin(by)
        return await self._registry.tool_servers.list_tool_servers(name)

    async def set_channel_policy(
        self,
        by: Actor,
        channel_id: str,
        lease_ttl_s: float | None = None,
        max_attempts: int | None = None,
        agents_may_close: bool | None = None,
        closers: Closers | None = None,
    ) -> PolicyBook:
        """Changes ``channel_id``'s policy; None leaves a value as it is."""
        await self.require_admin(by)
        return await self._channel_policies.set_channel_policy(
            channel_id, by.id, lease_ttl_s, max_attempts, agents_may_close, closers
        )

    async def policies(self, by: Actor) -> PolicyBook:
        await self.require_admin(by)
        return await self._channel_policies.policies()

    async def reconcile(self, by: Actor) -> ReconcileReport:
        """One reconcile tick now, as the scheduler would run it."""
        await self.require_admin(by)
        return await self._reconciler.reconcile_stale_tasks()

    async def board_stats(self, by: Actor) -> BoardStats:
        await self.require_admin(by)
        return await self._queries.board_stats()

    async def review_outbox(self, by: Actor) -> OutboxReview:
        await self.require_admin(by)
        return await self._dead_letters.review_outbox()

    async def retry_outbox_row(self, by: Actor, row_id: int) -> OutboxRow:
        await self.require_admin(by)
        return await self._dead_letters.retry_outbox_row(row_id, by)

    async def drop_outbox_row(self, by: Actor, row_id: int) -> OutboxRow:
        await self.require_admin(by)
        return await self._dead_letters.drop_outbox_row(row_id, by)
