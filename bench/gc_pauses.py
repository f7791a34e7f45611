"""The garbage collector's pauses in a server process, written down as they happen.

The server calls :func:`record_gc_pauses` at start; the benchmark reads the file afterwards with
:func:`read_gc_pauses`. Times are ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux, shared by
every process on the machine), so they line up with the benchmark's own timings.
"""

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

#: Collections shorter than this are not written down.
MIN_PAUSE = 0.001


@dataclass(frozen=True)
class Pause:
    """One collection: when it ended, how long it took, and which generation it collected."""

    ended: float
    seconds: float
    generation: int

    def overlaps(self, start: float, end: float) -> bool:
        return self.ended - self.seconds < end and self.ended > start


class _Recorder:
    def __init__(self, log: TextIO) -> None:
        self.log = log
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self.started = now
        elif now - self.started >= MIN_PAUSE:
            self.log.write(f"{now:.6f} {now - self.started:.6f} {info['generation']}\n")
            self.log.flush()


def record_gc_pauses(path: str) -> None:
    """Writes each collection of this process that takes ``MIN_PAUSE`` or longer to ``path``."""
    gc.callbacks.append(_Recorder(open(path, "a")))  # noqa: SIM115 - open for the process's life


def read_gc_pauses(path: Path) -> list[Pause]:
    if not path.exists():
        return []
    pauses = []
    for line in path.read_text().splitlines():
        ended, seconds, generation = line.split()
        pauses.append(Pause(float(ended), float(seconds), int(generation)))
    return pauses
