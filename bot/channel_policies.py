"""Channel policy's use cases: read the policy book, and override a channel's lease TTL,
dispatch attempts, agents' closing and who closes tasks.

Who may change a channel's policy is the admin desk's to decide (``bot.admin``); these check
only that the values keep the reconcile and the card working.
"""

from bot.access import Closers
from bot.clock import Clock
from bot.errors import InvalidInput
from bot.policy import ChannelPolicy, PolicyBook, load_policy_book
from bot.ports import Store
from bot.signal import Notify, Queued, ignore
from bot.task import LeasePolicy

#: Bounds on a channel's policy, so no override can break the reconcile or the card.
MAX_LEASE_TTL_S = 365 * 24 * 3600.0
MAX_DISPATCH_ATTEMPTS = 100


class ChannelPolicies:
    """Reads and writes channels' overrides of the global lease ``policy``."""

    def __init__(
        self, store: Store, clock: Clock, policy: LeasePolicy, notify: Notify = ignore
    ) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._notify = notify

    async def policies(self) -> PolicyBook:
        """The global lease policy and every channel's overrides."""
        async with self._store.read() as reader:
            return await load_policy_book(reader, self._policy)

    async def set_channel_policy(
        self,
        channel_id: str,
        by: str,
        lease_ttl_s: float | None,
        max_attempts: int | None,
        agents_may_close: bool | None = None,
        closers: Closers | None = None,
    ) -> PolicyBook:
        """Overrides the TTL, attempts, agents' closing and who closes tasks in ``channel_id``;
        None leaves a value as it is. Once it commits, whoever keeps policies between reads
        (outbox delivery, in every replica) is told to read them again."""
        _check_bounds(lease_ttl_s, max_attempts)
        async with self._store.transaction() as unit:
            unit.queued.add(Queued.DIRECTORY)
            book = await load_policy_book(unit, self._policy)
            current = book.channels.get(channel_id, ChannelPolicy(channel_id))
            merged = ChannelPolicy(
                channel_id,
                current.lease_ttl_s if lease_ttl_s is None else lease_ttl_s,
                current.max_dispatch_attempts if max_attempts is None else max_attempts,
                current.agents_may_close if agents_may_close is None else agents_may_close,
                current.closers if closers is None else closers.value,
            )
            await unit.set_channel_policy(merged, by, self._clock())
            book = await load_policy_book(unit, self._policy)
        self._notify(frozenset(unit.queued))
        return book


def _check_bounds(lease_ttl_s: float | None, max_attempts: int | None) -> None:
    """Raises InvalidInput for a TTL or a number of attempts out of bounds."""
    if lease_ttl_s is not None and lease_ttl_s <= 0:
        raise InvalidInput("The TTL must be a positive number of seconds.")
    if lease_ttl_s is not None and lease_ttl_s > MAX_LEASE_TTL_S:
        raise InvalidInput(f"The TTL can be at most {MAX_LEASE_TTL_S:.0f} seconds (a year).")
    if max_attempts is not None and max_attempts < 1:
        raise InvalidInput("Attempts must be at least 1.")
    if max_attempts is not None and max_attempts > MAX_DISPATCH_ATTEMPTS:
        raise InvalidInput(f"Attempts can be at most {MAX_DISPATCH_ATTEMPTS}.")
