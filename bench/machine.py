"""What the benchmark ran on, read from the machine itself."""

import os
import platform
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path


@dataclass(frozen=True)
class Machine:
    """The hardware and software a run was measured on."""

    nproc: int
    cpu: str
    ram_gib: float
    load_average: str
    os: str
    python: str
    libraries: str

    @classmethod
    def read(cls) -> "Machine":
        """Describes this machine from /proc, the platform module and installed packages."""
        return cls(
            nproc=len(os.sched_getaffinity(0)),
            cpu=_proc_field("/proc/cpuinfo", "model name") or platform.processor(),
            ram_gib=int((_proc_field("/proc/meminfo", "MemTotal") or "0 kB").split()[0]) / 2**20,
            load_average=load_average(),
            os=f"{platform.system()} {platform.release()}",
            python=platform.python_version(),
            libraries=", ".join(
                f"{name} {version(name)}" for name in ("sqlalchemy", "aiosqlite", "asyncpg")
            ),
        )

    def line(self, load_after: str, more: str = "") -> str:
        """One sentence for a section's header: the machine, its load at the start and at
        ``load_after``, Python and the libraries (and ``more`` of them)."""
        return (
            f"{self.cpu}, nproc {self.nproc}, {self.ram_gib:.1f} GiB RAM, {self.os}; load average "
            f"(1, 5, 15 min) at start {self.load_average}, at end {load_after}. Python "
            f"{self.python}; {self.libraries}{more}."
        )


def load_average() -> str:
    """The load average now (1, 5 and 15 minutes), as the sections print it."""
    return " ".join(f"{n:.2f}" for n in os.getloadavg())


def _proc_field(path: str, name: str) -> str | None:
    """The value of the first ``name: value`` line in a /proc file, if any."""
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None
