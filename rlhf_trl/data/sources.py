"""From a ``--datasets`` entry to raw rows: the embedded tiny task, local files, a registered (DS-Chat) dataset read
from the Hub or from a local copy, or any other Hub dataset in TRL's formats. Hub data goes through
``datasets.load_dataset``, so its cache and ``HF_HUB_OFFLINE=1`` work.

Every source also has a content fingerprint for the processed-data cache: file contents for local data, the
Arrow fingerprint for Hub data, the task's code and sizes for tiny-sort.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import adapters as _adapters  # noqa: F401  (registers DS-Chat's datasets)
from . import tiny_sort
from .arguments import SourceSpec
from .errors import DataValidationError
from .local_files import DATA_SUFFIXES, EVAL_NAMES, RawRows, data_files, is_saved_dataset, read_path
from .registry import DatasetAdapter, adapter_for_path, get_adapter, registered_names

# Evaluation splits looked for in a Hub dataset that names none, in this order.
HUB_EVAL_SPLITS = ("test", "validation", "eval", "dev")


def hash_path(path: Path, pattern: str = "**/*") -> str:
    """SHA-256 over the names and bytes of a file, or of every file under a folder (hidden ones excluded)."""
    digest = hashlib.sha256()
    if path.is_file():
        files = [path]
    elif is_saved_dataset(path):
        files = sorted(item for item in path.rglob("*") if item.is_file())
    else:
        files = data_files(path, pattern)
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class Source:
    """One resolved dataset entry. ``adapter`` is None for plain local data (records in our formats)."""

    spec: SourceSpec
    adapter: DatasetAdapter | None = None
    path: Path | None = None
    _rows: tuple | None = field(default=None, repr=False)  # read once, on first use

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def is_tiny(self) -> bool:
        return self.spec.name == tiny_sort.NAME and self.path is None

    def _eval_split_names(self) -> tuple[str, ...]:
        if self.adapter is None:
            return EVAL_NAMES
        return (self.adapter.eval_split,) if self.adapter.eval_split else ()

    def fingerprint(self) -> str:
        if self.is_tiny:
            code = inspect.getsource(tiny_sort.task) + inspect.getsource(tiny_sort)
            return hashlib.sha256((code + json.dumps(tiny_sort.TINY_SIZES, sort_keys=True)).encode()).hexdigest()
        if self.path is not None:
            pattern = self.adapter.local_file_pattern if self.adapter else "**/*"
            return hash_path(self.path, pattern)
        train, evaluation = self.rows()
        parts = [rows.items._fingerprint for rows in [*train, *evaluation]]
        return hashlib.sha256(json.dumps([self.spec.label, parts]).encode()).hexdigest()

    def rows(self) -> tuple[list[RawRows], list[RawRows]]:
        """Training and evaluation rows (not yet converted or checked); not for tiny-sort."""
        if self._rows is None:
            self._rows = self._read_rows()
        return self._rows

    def _read_rows(self) -> tuple[list[RawRows], list[RawRows]]:
        if self.path is not None:
            pattern = self.adapter.local_file_pattern if self.adapter else "**/*"
            train, evaluation = read_path(self.path, pattern, self._eval_split_names())
        elif self.adapter is not None:
            train, evaluation = _read_registered(self.adapter, self.spec)
        else:
            train, evaluation = _read_hub_dataset(self.spec)
        if self.spec.columns is not None:
            train = [select_columns(rows, self.spec.columns, self.label) for rows in train]
            evaluation = [select_columns(rows, self.spec.columns, self.label) for rows in evaluation]
        return train, evaluation


def select_columns(rows: RawRows, columns: tuple[str, ...], label: str) -> RawRows:
    """Only ``columns`` of every record (TRL's and the alignment-handbook's ``columns``); a missing one is an error."""
    if not isinstance(rows.items, list):
        missing = [column for column in columns if column not in rows.items.column_names]
        if missing:
            raise DataValidationError(
                f"{label}: no column(s) {missing} to select (columns: {rows.items.column_names})",
                source=label,
                reason="unexpected schema",
            )
        return RawRows(rows.origin, rows.items.select_columns(list(columns)))
    items = []
    for number, value in rows:
        if isinstance(value, dict):
            missing = [column for column in columns if column not in value]
            if missing:
                raise DataValidationError.for_record(
                    rows.origin, number, missing[0], "missing field", "named in the source's columns"
                )
            value = {column: value[column] for column in columns}
        items.append((number, value))
    return RawRows(rows.origin, items)


def _load_hub(label: str, path: str, config: str | None, options: dict, advice: str):
    import datasets

    try:
        return datasets.load_dataset(path, config, **options)
    except Exception as error:  # network, offline cache miss, auth, bad config: all end here with the same advice
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise DataValidationError(
            f"{label}: cannot load {path!r} from the Hub or its local cache ({type(error).__name__}: {first_line}); "
            + advice,
            source=label,
            reason="unreadable file",
        ) from error


def _pick_splits(loaded, label: str, train_split: str, eval_split: str | None, eval_required: bool):
    if train_split not in loaded:
        raise DataValidationError(
            f"{label}: no split {train_split!r} (splits: {', '.join(loaded)}); choose one with ',split=NAME' "
            "(YAML: split: NAME)",
            source=label,
            reason="empty",
        )
    train = [RawRows(f"{label}[{train_split}]", loaded[train_split])]
    if eval_split is not None and eval_split not in loaded:
        if eval_required:
            raise DataValidationError(
                f"{label}: no split {eval_split!r} (splits: {', '.join(loaded)})", source=label, reason="empty"
            )
        eval_split = None
    evaluation = [RawRows(f"{label}[{eval_split}]", loaded[eval_split])] if eval_split else []
    return train, evaluation


def _read_registered(adapter: DatasetAdapter, spec: SourceSpec) -> tuple[list[RawRows], list[RawRows]]:
    hub_path = adapter.hub_path or adapter.name
    loaded = _load_hub(
        adapter.name,
        hub_path,
        spec.config or adapter.hub_config,
        spec.hub_options,
        f"offline, pass a local copy as '{adapter.name}@/path/to/copy'",
    )
    eval_split = spec.eval_split or (None if spec.split else adapter.eval_split)
    return _pick_splits(loaded, adapter.name, spec.split or adapter.train_split, eval_split, bool(spec.eval_split))


def _read_hub_dataset(spec: SourceSpec) -> tuple[list[RawRows], list[RawRows]]:
    """Any Hub dataset (or a ``datasets`` builder such as ``json`` with ``data_files``): the training split
    (``split``, default 'train') and an evaluation split (``eval_split``, else the first of test/validation/eval/dev
    the dataset has)."""
    loaded = _load_hub(
        spec.label,
        spec.name,
        spec.config,
        spec.hub_options,
        "it is not a local file or folder and not a registered dataset (known: tiny-sort, "
        + ", ".join(registered_names())
        + "); offline, the dataset must be in the Hugging Face cache from an earlier online run",
    )
    train_split = spec.split or "train"
    eval_split = spec.eval_split
    if eval_split is None:
        eval_split = next((name for name in HUB_EVAL_SPLITS if name in loaded and name != train_split), None)
    return _pick_splits(loaded, spec.label, train_split, eval_split, spec.eval_split is not None)


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name`` without a data-file suffix or a path start: what a Hub dataset id can be."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix.lower() in DATA_SUFFIXES:
        return False
    return all(part and not part.startswith((".", "-")) for part in name.split("/"))


def resolve_source(spec: SourceSpec) -> Source:
    """Decide what a ``--datasets`` entry means: tiny-sort, a registered name (Hub or ``name@copy``), a local
    file or folder (one whose path ends with a registered name uses its adapter), or any other Hub dataset."""
    if spec.name == tiny_sort.NAME and spec.local_path is None:
        return Source(spec)
    adapter = get_adapter(spec.name)
    if adapter is not None:
        if spec.local_path is not None:
            return Source(spec, adapter, Path(spec.local_path))
        return Source(spec, adapter)
    if spec.local_path is not None:
        raise DataValidationError(
            f"{spec.name}: not a registered dataset, so '@{spec.local_path}' has no adapter; known names: "
            f"{', '.join(registered_names())}",
            source=spec.name,
            reason="unknown dataset",
        )
    path = Path(spec.name).expanduser()
    hub_only = [
        option for option in ("config", "split", "eval_split", "revision", "data_dir") if getattr(spec, option)
    ]
    if path.exists() and not spec.data_files:
        if hub_only:
            raise DataValidationError(
                f"{spec.label}: option(s) {', '.join(hub_only)} apply to Hub datasets, not to the local path "
                f"{spec.name} (name its files train*/test* instead)",
                source=spec.label,
                reason="unknown dataset",
            )
        return Source(spec, adapter_for_path(spec.name), path)
    if looks_like_hub_id(spec.name) or spec.data_files:
        return Source(spec)
    raise DataValidationError(
        f"{spec.name}: no such file or folder, and not a registered dataset (known: tiny-sort, "
        f"{', '.join(registered_names())}) or a Hub id (org/name)",
        source=spec.name,
        reason="unknown dataset",
    )
