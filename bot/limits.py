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
        self._next_sweep = monotonic() + WINDOW_S

    def take(self, key: str) -> float | None:
        """Counts a call by ``key``: None when it may go ahead, else the seconds until it may.

        The budget is per process: with several replicas behind one address, a token may make
        this many calls at each.
        """
        now = self._monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        calls = self._calls.setdefault(key, deque())
        while calls and now - calls[0] >= WINDOW_S:
            calls.popleft()
        if len(calls) >= self._per_minute:
            return WINDOW_S - (now - calls[0])
        calls.append(now)
        return None

    def _sweep(self, now: float) -> None:
        """Forgets the keys with no call in the window, so the map holds only active tokens."""
        self._calls = {k: c for k, c in self._calls.items() if c and now - c[-1] < WINDOW_S}
        self._next_sweep = now + WINDOW_S
