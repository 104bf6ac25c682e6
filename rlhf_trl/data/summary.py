"""What happened to every record: read, used, skipped (invalid) or filtered (left out by a dataset adapter).

The step scripts print the summary before training so that no record disappears unnoticed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SourceReport:
    """Counts for one dataset source (a file, folder or registry name) in one step."""

    source: str = field(metadata={"help": "The source as the user named it."})
    role: str = field(default="train", metadata={"help": "'train' for --datasets, 'eval' for --eval_datasets."})
    records_read: int = field(default=0, metadata={"help": "Raw records read, before validation."})
    records_valid: int = field(default=0, metadata={"help": "Records that passed validation."})
    skipped: Counter = field(default_factory=Counter, metadata={"help": "Invalid records skipped, per reason."})
    filtered: Counter = field(default_factory=Counter, metadata={"help": "Records an adapter left out, per reason."})
    first_location: dict = field(default_factory=dict, metadata={"help": "Where each reason was first seen."})
    train_used: int = field(default=0, metadata={"help": "Records this step trains on from this source."})
    eval_used: int = field(default=0, metadata={"help": "Records this step evaluates on from this source."})
    notes: list = field(default_factory=list, metadata={"help": "Free-text notes, e.g. why a source was unused."})
    format: str = field(default="", metadata={"help": "The dataset format found (TRL's names)."})
    taken: str = field(
        default="", metadata={"help": "How much of the source this step takes and why (whole, a data_split share)."}
    )
    used: bool = field(default=True, metadata={"help": "False when the step cannot use this source at all."})

    def count_skip(self, reason: str, location: str) -> None:
        self.skipped[reason] += 1
        self.first_location.setdefault(reason, location)

    def count_filter(self, reason: str, location: str) -> None:
        self.filtered[reason] += 1
        self.first_location.setdefault(reason, location)


@dataclass
class ValidationSummary:
    """Per-source reports for one step; ``str()`` gives a table for the log."""

    step: int = field(default=0, metadata={"help": "Pipeline step (1, 2 or 3) the data was prepared for."})
    sources: list[SourceReport] = field(default_factory=list, metadata={"help": "One report per source."})
    notes: list[str] = field(default_factory=list, metadata={"help": "Notes about the step as a whole."})

    @property
    def counts_by_reason(self) -> Counter:
        """Skipped (invalid) records per reason, over all sources."""
        total = Counter()
        for report in self.sources:
            total.update(report.skipped)
        return total

    @property
    def filtered_by_reason(self) -> Counter:
        """Adapter-filtered records per reason, over all sources."""
        total = Counter()
        for report in self.sources:
            total.update(report.filtered)
        return total

    @property
    def total_read(self) -> int:
        return sum(report.records_read for report in self.sources)

    @property
    def total_skipped(self) -> int:
        return sum(self.counts_by_reason.values())

    @property
    def total_filtered(self) -> int:
        return sum(self.filtered_by_reason.values())

    def report_for(self, source: str, role: str = "train") -> SourceReport:
        """The report of ``source``, created on first use."""
        for report in self.sources:
            if report.source == source and report.role == role:
                return report
        report = SourceReport(source=source, role=role)
        self.sources.append(report)
        return report

    def to_dict(self) -> dict:
        """Plain JSON-able form, used by the processed-data cache."""
        return {
            "step": self.step,
            "notes": list(self.notes),
            "sources": [
                {
                    "source": report.source,
                    "role": report.role,
                    "records_read": report.records_read,
                    "records_valid": report.records_valid,
                    "skipped": dict(report.skipped),
                    "filtered": dict(report.filtered),
                    "first_location": dict(report.first_location),
                    "train_used": report.train_used,
                    "eval_used": report.eval_used,
                    "notes": list(report.notes),
                    "format": report.format,
                    "taken": report.taken,
                    "used": report.used,
                }
                for report in self.sources
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> ValidationSummary:
        summary = cls(step=data["step"], notes=list(data["notes"]))
        for item in data["sources"]:
            summary.sources.append(
                SourceReport(
                    source=item["source"],
                    role=item["role"],
                    records_read=item["records_read"],
                    records_valid=item["records_valid"],
                    skipped=Counter(item["skipped"]),
                    filtered=Counter(item["filtered"]),
                    first_location=dict(item["first_location"]),
                    train_used=item["train_used"],
                    eval_used=item["eval_used"],
                    notes=list(item["notes"]),
                    format=item["format"],
                    taken=item["taken"],
                    used=item["used"],
                )
            )
        return summary

    def __str__(self) -> str:
        header = ("source", "role", "format", "read", "valid", "skipped", "filtered", "train", "eval", "taken")
        rows = []
        for report in self.sources:
            # A source the step does not use, or an eval-only source, has no training count to show: "-", not 0.
            counts = [
                report.records_read,
                report.records_valid,
                sum(report.skipped.values()),
                sum(report.filtered.values()),
                report.train_used if report.role == "train" else None,
                report.eval_used,
            ]
            cells = [str(count) if report.used and count is not None else "-" for count in counts]
            rows.append((report.source, report.role, report.format, *cells, report.taken))
        widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
        left_aligned = (0, 1, 2, len(header) - 1)

        def line(cells: tuple) -> str:
            # Names and reasons read best left-aligned, the counts right-aligned.
            return "  ".join(
                cell.ljust(width) if column in left_aligned else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(cells, widths))
            ).rstrip()

        lines = [f"Data summary for step {self.step}", line(header), "  ".join("-" * width for width in widths)]
        lines.extend(line(row) for row in rows)
        for report in self.sources:
            for kind, counts in (("skipped", report.skipped), ("filtered", report.filtered)):
                for reason, count in sorted(counts.items()):
                    where = report.first_location.get(reason, "")
                    lines.append(f"  {report.source}: {kind} {count} x {reason} (first at {where})")
            lines.extend(f"  {report.source}: {note}" for note in report.notes if note != report.taken)
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)
