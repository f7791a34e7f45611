"""Whether the database answers, for readiness checks."""

from typing import Protocol


class Health(Protocol):
    """Whether the database answers, for readiness checks."""

    async def ping(self) -> None:
        """Raises unless the database answers a trivial query."""
        ...
