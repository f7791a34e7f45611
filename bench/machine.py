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
            load_average=" ".join(f"{n:.2f}" for n in os.getloadavg()),
            os=f"{platform.system()} {platform.release()}",
            python=platform.python_version(),
            libraries=", ".join(
                f"{name} {version(name)}" for name in ("sqlalchemy", "aiosqlite", "asyncpg")
            ),
        )


def _proc_field(path: str, name: str) -> str | None:
    """The value of the first ``name: value`` line in a /proc file, if any."""
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None
