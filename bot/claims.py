"""Claims a worker holds: outbox rows in flight and agent wake-ups held for a run."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Released:
    """Claims handed back: outbox rows reopened, agent wake-ups made claimable again."""

    outbox_rows: int = 0
    wakeups: int = 0

    def __bool__(self) -> bool:
        return bool(self.outbox_rows or self.wakeups)
