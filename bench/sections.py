"""A benchmark's generated section in docs/benchmarks.md, between its start and end markers."""

from pathlib import Path


def write_section(path: Path, title: str, start: str, end: str, section: str) -> None:
    """Replaces the text from ``start`` to ``end`` in ``path`` with ``section`` (which carries
    both markers), or appends ``title`` and ``section`` at its end when the markers are not
    there yet."""
    text = path.read_text()
    before, found, rest = text.partition(start)
    if not found:
        path.write_text(text.rstrip("\n") + f"\n\n{title}\n\n{section}\n")
        return
    path.write_text(before + section + rest.partition(end)[2])
