"""How often an external agent may call its tools: a sliding window per agent token."""

import time
from collections import deque
from collections.abc import Callable

#: The window the budget is counted over, in seconds.
WINDOW_S = 60.0


class CallBudget:
    """At most ``per_minute`` calls per key in any 60 s; ``take`` says when to retry when not."""

    def __init__(self, per_minute: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._monotonic = monotonic
        self._calls: dict[str, deque[float]] = {}

    def take(self, key: str) -> float | None:
        """Counts a call by ``key``: None when it may go ahead, else the seconds until it may."""
        now = self._monotonic()
        calls = self._calls.setdefault(key, deque())
        while calls and now - calls[0] >= WINDOW_S:
            calls.popleft()
        if len(calls) >= self._per_minute:
            return WINDOW_S - (now - calls[0])
        calls.append(now)
        return None
