"""The benchmarks file (BENCHMARKS.md) that measurements are appended to. Imports nothing heavy, so benchmark
scripts can check their options and fail in one line before torch loads."""

from __future__ import annotations

from pathlib import Path


def append_section(path: Path, section: str) -> None:
    """Add a markdown section at the end of a benchmarks file (created with a heading when missing)."""
    if not path.exists():
        path.write_text("# Benchmarks\n\nNewest last.\n")
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n" + section)


def publish_section(section: str, path: str | Path | None) -> None:
    """Print a measurement's markdown section and, when ``path`` is given, append it there."""
    print(section)
    if path:
        append_section(Path(path), section)
