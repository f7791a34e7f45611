"""The issue's targets for the reconcile tick, judged on the median and on the best tick.

1. On SQLite, a tick over 1M tasks of which 10k are stale takes under 2 s.
2. With the same stale set, the tick over more tasks takes at most 1.5x the tick over the
   fewest tasks measured (10k): the cost follows the stale set, not the table.

The median is the verdict; the best tick is shown beside it because, on a machine shared with
other work, it is the closer estimate of what the tick itself costs.
"""

from dataclasses import dataclass

from bench.tick import TickResult

#: (backend, tasks, stale) -> seconds: absolute ceilings.
CEILINGS = {("sqlite", 1_000_000, 10_000): 2.0}
#: How much slower a tick over a bigger table may be, for the same stale set.
MAX_GROWTH = 1.5


@dataclass(frozen=True)
class Verdict:
    """A target as written in the table and whether the median and best ticks met it."""

    target: str
    median_passed: bool | None = None
    best_passed: bool | None = None

    @property
    def result(self) -> str:
        if self.median_passed is None:
            return ""
        median = "pass" if self.median_passed else "**FAIL**"
        if self.best_passed == self.median_passed:
            return median
        return f"{median} on median ({'pass' if self.best_passed else 'fail'} on best)"


def judge(result: TickResult, results: list[TickResult], same_stale: int) -> Verdict:
    """Judges ``result`` against its ceiling or, in the same-stale series, its baseline."""
    ceiling = CEILINGS.get((result.backend, result.tasks, result.stale.size))
    if ceiling is not None:
        return Verdict(f"< {ceiling:g} s", result.median < ceiling, result.best < ceiling)
    if result.stale.size != same_stale:
        return Verdict("")
    baseline = _baseline(result, results)
    if baseline is result:
        return Verdict(f"baseline of the same-{same_stale:,}-stale series")
    median = result.median / baseline.median
    best = result.best / baseline.best
    target = (
        f"<= {MAX_GROWTH:g} x the {baseline.tasks:,}-task tick: "
        f"ratio {median:.2f} (best {best:.2f})"
    )
    return Verdict(target, median <= MAX_GROWTH, best <= MAX_GROWTH)


def _baseline(result: TickResult, results: list[TickResult]) -> TickResult:
    """The result with the same backend and stale set over the fewest tasks."""
    series = [
        r for r in results if r.backend == result.backend and r.stale.size == result.stale.size
    ]
    return min(series, key=lambda r: r.tasks)
