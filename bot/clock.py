"""Time as a dependency: the composition root passes ``utc_now``; tests pass a fixed clock."""

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Returns the current time, timezone-aware in UTC."""
    return datetime.now(UTC)
