"""One replica at a time runs a periodic job's tick."""

from contextlib import AbstractAsyncContextManager
from typing import Protocol


class TickLock(Protocol):
    """One replica at a time runs a periodic job's tick (the reconcile), so the others do not
    repeat its reads of the chat platform. Correctness never rests on it: every write is still a
    compare-and-set."""

    def hold(self) -> AbstractAsyncContextManager[bool]:
        """Tries to take the lock for the tick without waiting: yields True when this replica
        holds it (released when the block ends), False when another replica does."""
        ...
