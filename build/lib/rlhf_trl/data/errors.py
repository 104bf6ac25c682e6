"""Errors of the data layer.

``DataValidationError`` is the one error users see: a one-line message that names the file (or dataset), the record
and the field. ``RecordProblem`` and ``RecordFiltered`` are raised inside the per-record code and turned into a
``DataValidationError`` or a counted skip by the loader, which knows where the record came from.
"""

from __future__ import annotations


class DataValidationError(ValueError):
    """Bad input data. ``source``, ``record_number`` (1-based), ``field`` and ``reason`` are kept for callers."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        record_number: int | None = None,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.record_number = record_number
        self.field = field
        self.reason = reason

    @classmethod
    def for_record(
        cls, source: str, record_number: int | None, field: str | None, reason: str, detail: str = ""
    ) -> DataValidationError:
        """Build the standard message: ``source, record N, field 'x': reason (detail)``."""
        parts = [source]
        if record_number is not None:
            parts.append(f"record {record_number}")
        if field is not None:
            parts.append(f"field {field!r}")
        message = ", ".join(parts) + f": {reason}" + (f" ({detail})" if detail else "")
        # One line, whatever the detail contains.
        message = " ".join(message.split())
        return cls(message, source=source, record_number=record_number, field=field, reason=reason)


class RecordProblem(Exception):
    """One record breaks a rule; ``reason`` is a short fixed phrase used as a counting key in the summary."""

    def __init__(self, field: str | None, reason: str, detail: str = "") -> None:
        super().__init__(f"{field}: {reason} {detail}".strip())
        self.field = field
        self.reason = reason
        self.detail = detail


class RecordFiltered(Exception):
    """A well-formed record that a dataset adapter leaves out by design (e.g. a comparison with tied scores).

    Filtered records are always counted in the summary and never raise, whatever ``skip_invalid_records`` says.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
