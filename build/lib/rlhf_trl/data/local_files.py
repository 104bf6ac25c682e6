"""Reading raw records from local files and folders.

Files: ``.json`` (a list of records, as DS-Chat's local json data; JSON lines are accepted too), ``.jsonl``,
``.parquet`` and ``.csv``. Folders: a ``datasets`` ``save_to_disk`` folder, or any folder of data files (e.g. a
downloaded Hub repository), where files whose name or folder starts with ``train`` (or names no split) are training
data and those starting with ``eval``/``validation``/``valid``/``dev``/``test`` are evaluation data (a registered
dataset reads only its own eval split's files).

Broken files raise ``DataValidationError`` naming the file; a broken line of a JSON-lines file is a broken *record*
(it can be skipped with the others). Record numbers are 1-based; in JSON-lines files they are line numbers.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DataValidationError, RecordProblem

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
EVAL_NAMES = ("eval", "validation", "dev", "test")


@dataclass
class RawRows:
    """Raw records of one file or dataset split: ``items`` is a list of (record number, value) or a ``Dataset``.

    A value may be a ``RecordProblem`` when the record itself could not be read (a broken JSON line).
    """

    origin: str
    items: object

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[int, object]]:
        if isinstance(self.items, list):
            yield from self.items
        else:
            yield from enumerate(self.items, start=1)


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text of a file (a UTF-8 byte-order mark is dropped); other encodings are reported with the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataValidationError(
            f"{path}: not valid UTF-8 text at line {line} (byte {error.start}); save the file as UTF-8",
            source=str(path),
            reason="wrong encoding",
        ) from error


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataValidationError(
            f"{path}: cannot read file ({error.strerror or error})", source=str(path), reason="unreadable file"
        ) from error


def read_json_lines(path: Path, data: bytes) -> RawRows:
    """One record per line; a line that is not valid UTF-8 or JSON becomes a ``RecordProblem`` value."""
    items = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line.decode("utf-8"))))
        except UnicodeDecodeError:
            items.append((number, RecordProblem(None, "unreadable record", "not valid UTF-8; save as UTF-8")))
        except ValueError as error:
            items.append((number, RecordProblem(None, "unreadable record", f"not valid JSON: {error}")))
    return RawRows(str(path), items)


def read_json(path: Path, data: bytes) -> RawRows:
    """A JSON list of records; a file that does not parse as one JSON value is read as JSON lines."""
    text = _decode(path, data)
    try:
        value = json.loads(text)
    except ValueError as error:
        if text.lstrip().startswith("{") and text.count("\n") > 0:
            return read_json_lines(path, data)
        raise DataValidationError(
            f"{path}: not valid JSON ({error})", source=str(path), reason="unreadable file"
        ) from None
    if isinstance(value, dict):
        value = [value]  # a file holding a single record
    if not isinstance(value, list):
        raise DataValidationError(
            f"{path}: expected a JSON list of records, got {type(value).__name__}",
            source=str(path),
            reason="unreadable file",
        )
    return RawRows(str(path), list(enumerate(value, start=1)))


def read_csv(path: Path, data: bytes) -> RawRows:
    """A CSV file with a header row; a row with more cells than the header is an unreadable record."""
    text = _decode(path, data)
    items = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for number, row in enumerate(reader, start=1):
            if None in row:
                items.append((number, RecordProblem(None, "unreadable record", "more cells than header columns")))
            else:
                # A row shorter than the header fills None: that reads as a missing field.
                items.append((number, dict(row)))
    except csv.Error as error:
        raise DataValidationError(
            f"{path}: not valid CSV at line {reader.line_num} ({error})", source=str(path), reason="unreadable file"
        ) from error
    if reader.fieldnames is None:
        raise DataValidationError(f"{path}: empty CSV file (no header row)", source=str(path), reason="empty")
    return RawRows(str(path), items)


def read_parquet(path: Path, data: bytes) -> RawRows:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(pyarrow.BufferReader(data))
    except (pyarrow.ArrowException, OSError, ValueError) as error:
        raise DataValidationError(
            f"{path}: not a readable Parquet file ({error})", source=str(path), reason="unreadable file"
        ) from error
    return RawRows(str(path), list(enumerate(table.to_pylist(), start=1)))


READERS = {".json": read_json, ".jsonl": read_json_lines, ".parquet": read_parquet, ".csv": read_csv}


def read_file(path: str | Path) -> RawRows:
    """Raw records of one data file, chosen by suffix."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataValidationError(
            f"{path}: unsupported file type; use one of {', '.join(DATA_SUFFIXES)}",
            source=str(path),
            reason="unreadable file",
        )
    return reader(path, _read_bytes(path))


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def split_of(relative: Path) -> str | None:
    """The split a data file's path names ('train', 'validation', 'eval', 'dev', 'test'), or None.

    The first folder or file name starting with a split word decides; 'valid...' counts as 'validation'.
    """
    for part in [*relative.parent.parts, relative.name]:
        lowered = part.lower()
        for word in ("train", "validation", "valid", "eval", "dev", "test"):
            if lowered.startswith(word):
                return "validation" if word == "valid" else word
    return None


def data_files(folder: Path, pattern: str = "**/*") -> list[Path]:
    """Data files under ``folder`` matching ``pattern``, in a stable order; hidden files and folders are left out."""
    files = []
    for path in sorted(folder.glob(pattern)):
        relative = path.relative_to(folder)
        hidden = any(part.startswith(".") for part in relative.parts)
        if path.is_file() and not hidden and path.suffix.lower() in DATA_SUFFIXES:
            files.append(path)
    return files


def read_saved_dataset(path: Path, eval_split_names: tuple[str, ...] = EVAL_NAMES) -> tuple[list, list]:
    """Train and eval ``RawRows`` of a ``save_to_disk`` folder (a Dataset is all training data)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises many types for a damaged folder; all mean the same here
        raise DataValidationError(
            f"{path}: cannot load saved dataset ({error})", source=str(path), reason="unreadable file"
        ) from error
    if isinstance(loaded, datasets.Dataset):
        return [RawRows(str(path), loaded)], []
    train = [RawRows(f"{path}[{name}]", loaded[name]) for name in loaded if name.startswith("train")]
    eval_name = next((name for name in eval_split_names if name in loaded), None)
    evaluation = [RawRows(f"{path}[{eval_name}]", loaded[eval_name])] if eval_name else []
    if not train:
        raise DataValidationError(
            f"{path}: saved dataset has no 'train' split (splits: {list(loaded)})", source=str(path), reason="empty"
        )
    return train, evaluation


def read_path(path: str | Path, pattern: str = "**/*", eval_split_names: tuple[str, ...] = EVAL_NAMES):
    """Train and eval ``RawRows`` lists of a file or folder; a single file is all training data."""
    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"{path}: no such file or folder", source=str(path), reason="unreadable file")
    if path.is_file():
        return [read_file(path)], []
    if is_saved_dataset(path):
        return read_saved_dataset(path, eval_split_names)
    files = data_files(path, pattern)
    if not files:
        raise DataValidationError(
            f"{path}: no data files ({', '.join(DATA_SUFFIXES)}) in folder", source=str(path), reason="empty"
        )
    train, evaluation, ignored = [], [], []
    for file in files:
        split = split_of(file.relative_to(path))
        if split in (None, "train"):
            train.append(read_file(file))
        elif split in eval_split_names:
            evaluation.append(read_file(file))
        else:
            ignored.append(file.name)  # e.g. a test split when the dataset evaluates on its validation split
    if ignored:
        logger.info("%s: files of other splits not read: %s", path, ", ".join(ignored))
    if not train:
        raise DataValidationError(
            f"{path}: only evaluation files found; name training files train*", source=str(path), reason="empty"
        )
    return train, evaluation
