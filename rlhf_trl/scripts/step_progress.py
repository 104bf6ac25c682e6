"""Progress of a running step, read from the ``metrics.jsonl`` it appends to (never from its log text).

:class:`MetricsFollower` remembers how far it has read; each :meth:`MetricsFollower.new_records` call returns the
complete records written since. A line still being written is left for the next call.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_trl.steps import Step


class MetricsFollower:
    """Reads the records a step appends to ``path`` after the follower was made.

    Records already in the file at the start belong to earlier attempts and are skipped. A step that starts afresh
    moves its folder aside (a new file: read from its start); one that resumes cuts the file back to its checkpoint
    (the same file, shorter: what remains is earlier records, so reading goes on from its new end).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.identity, self.offset = self._state()
        self.pending = b""

    def _state(self) -> tuple[tuple[int, int] | None, int]:
        try:
            stat = self.path.stat()
        except OSError:
            return None, 0
        return (stat.st_dev, stat.st_ino), stat.st_size

    def new_records(self) -> list[dict]:
        identity, size = self._state()
        if identity is None:
            return []
        if identity != self.identity:
            self.identity, self.offset, self.pending = identity, 0, b""
        elif size < self.offset:
            self.offset, self.pending = size, b""
        if size == self.offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read(size - self.offset)
        self.offset += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not a record (a damaged line is the plots' and the report's to point out)
            if isinstance(record, dict):
                records.append(record)
        return records


def progress_line(step: Step, record: dict) -> str | None:
    """One line for a metrics.jsonl record of ``step``: its step counter and the step's main metrics, or None when
    the record holds none of them."""
    shown = [
        f"{key.split('/')[-1]}={record[key]:.4g}"
        for key in step.progress_metrics
        if isinstance(record.get(key), (int, float))
    ]
    if not shown:
        return None
    return f"{step.name} step {record.get('step', '?')}  " + "  ".join(shown)
