"""Append the GPU check's summary to BENCHMARKS.md: date, device, command and the outcome of each part.

    python benchmarks/gpu_check_report.py --parts PARTS.tsv --device "1 x NVIDIA H200" --command "..." \\
        --log outputs/gpu_check/gpu_check.log --benchmarks-file BENCHMARKS.md

PARTS.tsv has one line per part: name, exit status, seconds, timeout in seconds (tab-separated), as
benchmarks/gpu_check.sh writes it. The parts' own results (benchmark tables, memory tables) are appended by the
commands themselves; this section says which of them ran, failed or ran out of time.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

TIMED_OUT = (124, 137)  # what `timeout` returns when it stops a command (TERM, then KILL)


def read_parts(path: Path) -> list[dict]:
    parts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise ValueError(f"{path} line {number}: expected 4 tab-separated fields (name, status, seconds, limit)")
        name, status, seconds, limit = fields
        parts.append({"name": name, "status": int(status), "seconds": float(seconds), "limit": int(limit)})
    return parts


def outcome(part: dict) -> str:
    if part["status"] == 0:
        return "ok"
    if part["status"] in TIMED_OUT:
        return f"timed out (limit {part['limit']} s)"
    if part["status"] == 3:
        return "skipped"
    return f"failed (exit {part['status']})"


def format_section(parts: list[dict], device: str, command: str, log: str, when: datetime.datetime) -> str:
    rows = [f"| {part['name']} | {outcome(part)} | {part['seconds']:.0f} |" for part in parts]
    return (
        "\n".join(
            [
                f"## GPU check, {when:%Y-%m-%d %H:%M UTC}",
                "",
                f"- Command: `{command}`",
                f"- Device: {device}",
                f"- Log: `{log}`",
                "",
                "| part | outcome | wall s |",
                "|---|---|---|",
                *rows,
                "",
                "The benchmark and memory sections appended just before this one are this check's measurements.",
            ]
        )
        + "\n"
    )


def append(path: Path, section: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n" + section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", required=True, help="tab-separated outcomes written by gpu_check.sh")
    parser.add_argument("--device", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--benchmarks-file", default="BENCHMARKS.md")
    options = parser.parse_args(argv)
    try:
        parts = read_parts(Path(options.parts))
    except (OSError, ValueError) as error:
        print(f"gpu_check_report: {error}", file=sys.stderr)
        return 2
    section = format_section(
        parts, options.device, options.command, options.log, datetime.datetime.now(datetime.timezone.utc)
    )
    append(Path(options.benchmarks_file), section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
