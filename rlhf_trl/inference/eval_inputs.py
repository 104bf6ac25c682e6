"""Input files of ``rlhf-trl eval``: reading and validating the records of a ``.jsonl`` or ``.json`` file.

A record holds a ``"prompt"`` field, plus ``"chosen"`` and ``"rejected"`` for reward pairs, in TRL's text or
conversational form (a prompt as a list of ``{"role", "content"}`` messages, chosen/rejected as assistant messages).
Every problem is one line that names the file, the record and the field.
"""

from __future__ import annotations

import json
from pathlib import Path


class EvalInputError(ValueError):
    """An input file, record or model folder that evaluation cannot use; the message is one line."""


def _check_messages(value, where: str) -> None:
    """A conversation field: a non-empty list of {"role": str, "content": str} messages."""
    if not value:
        raise EvalInputError(f"{where}: an empty list of messages")
    for position, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise EvalInputError(f"{where}: message {position} must be an object with a 'role' string")
        if not isinstance(message.get("content"), str):
            raise EvalInputError(f"{where}: message {position} must have a 'content' string")


def read_records(path: str | Path, required_fields: tuple[str, ...]) -> list[dict]:
    """Records of a ``.jsonl`` or ``.json`` file; each must hold every field of ``required_fields`` as a string or
    as a list of messages (TRL's conversational form), all fields of a record in the same form."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise EvalInputError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from error
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise EvalInputError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
        if not isinstance(records, list):
            raise EvalInputError(f"{path}: a .json file must hold a list of records, found {type(records).__name__}")
    if not records:
        raise EvalInputError(f"{path}: no records")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise EvalInputError(f"{path}: record {index}: expected a JSON object, found {type(record).__name__}")
        for field in required_fields:
            if field not in record:
                raise EvalInputError(f"{path}: record {index}: missing field {field!r}")
            value = record[field]
            if isinstance(value, list):
                _check_messages(value, f"{path}: record {index}: field {field!r}")
            elif not isinstance(value, str):
                kind = type(value).__name__
                raise EvalInputError(
                    f"{path}: record {index}: field {field!r} must be a string or a list of messages, found {kind}"
                )
        forms = {isinstance(record[field], list) for field in required_fields}
        if len(forms) > 1:
            raise EvalInputError(
                f"{path}: record {index}: fields {', '.join(required_fields)} mix text and message lists"
            )
    return records
