"""A benchmark's --write replaces its own generated section of docs/benchmarks.md and keeps the
hand-written notes and every other section around it."""

from pathlib import Path

import pytest

from bench.sections import write_section

START, END = "<!-- bench.x:start -->", "<!-- bench.x:end -->"


def section(body: str) -> str:
    return f"{START}\n\n{body}\n\n{END}"


def test_a_rerun_replaces_only_the_generated_part(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\n## X\n\n{section('old numbers')}\n\nNotes by hand.\n\n## Y\n")
    write_section(doc, "## X", START, END, section("new numbers"))
    assert doc.read_text() == (
        f"# Benchmarks\n\n## X\n\n{section('new numbers')}\n\nNotes by hand.\n\n## Y\n"
    )


def test_a_first_run_appends_its_title_and_section(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Y\n\nOther results.\n\n")
    write_section(doc, "## X", START, END, section("numbers"))
    assert (
        doc.read_text()
        == f"# Benchmarks\n\n## Y\n\nOther results.\n\n## X\n\n{section('numbers')}\n"
    )


def test_a_start_marker_without_its_end_is_refused_and_the_file_left_alone(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "benchmarks.md"
    broken = f"# Benchmarks\n\n## X\n\n{START}\n\nold\n\n## Y\n\nOther results.\n"
    doc.write_text(broken)
    with pytest.raises(ValueError, match="mend it by hand"):
        write_section(doc, "## X", START, END, section("new"))
    assert doc.read_text() == broken


def test_a_missing_file_is_created_with_the_section(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "benchmarks.md"
    write_section(doc, "## X", START, END, section("numbers"))
    assert doc.read_text() == f"## X\n\n{section('numbers')}\n"
