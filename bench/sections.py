"""A benchmark's generated section in docs/benchmarks.md, between its start and end markers."""

from pathlib import Path


def write_section(path: Path, title: str, start: str, end: str, section: str) -> None:
    """Replaces the text from ``start`` to ``end`` in ``path`` with ``section`` (which carries
    both markers), keeping the hand-written notes around it; appends ``title`` and ``section``
    when the markers are not there yet (and creates the file when it is missing)."""
    text = path.read_text() if path.exists() else ""
    before, found, rest = text.partition(start)
    if not found:
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = text.rstrip("\n") + "\n\n" if text.strip() else ""
        path.write_text(f"{kept}{title}\n\n{section}\n")
        return
    _, ended, after = rest.partition(end)
    if not ended:  # rather than lose whatever follows the start marker
        raise ValueError(f"{path} has {start} but not {end}; mend it by hand first")
    path.write_text(before + section + after)
