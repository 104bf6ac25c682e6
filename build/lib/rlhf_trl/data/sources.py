"""From a ``--datasets`` entry to raw rows: the embedded tiny task, local files, or a registered dataset read from
the Hub (through ``datasets.load_dataset``, so its cache and ``HF_DATASETS_OFFLINE=1`` work) or from a local copy.

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
from .local_files import EVAL_NAMES, RawRows, data_files, is_saved_dataset, read_path
from .registry import DatasetAdapter, adapter_for_path, get_adapter, registered_names


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
        return hashlib.sha256(json.dumps([self.spec.name, parts]).encode()).hexdigest()

    def rows(self) -> tuple[list[RawRows], list[RawRows]]:
        """Training and evaluation rows (not yet converted or checked); not for tiny-sort."""
        if self._rows is None:
            self._rows = self._read_rows()
        return self._rows

    def _read_rows(self) -> tuple[list[RawRows], list[RawRows]]:
        if self.path is not None:
            pattern = self.adapter.local_file_pattern if self.adapter else "**/*"
            return read_path(self.path, pattern, self._eval_split_names())
        return _read_hub(self.adapter)


def _read_hub(adapter: DatasetAdapter) -> tuple[list[RawRows], list[RawRows]]:
    import datasets

    hub_path = adapter.hub_path or adapter.name
    try:
        loaded = datasets.load_dataset(hub_path, adapter.hub_config)
    except Exception as error:  # network, offline cache miss, auth: all end here with the same advice
        raise DataValidationError(
            f"{adapter.name}: cannot load {hub_path!r} from the Hub or its local cache ({type(error).__name__}: "
            f"{error}); offline, pass a local copy as '{adapter.name}@/path/to/copy'",
            source=adapter.name,
            reason="unreadable file",
        ) from error
    if adapter.train_split not in loaded:
        raise DataValidationError(
            f"{adapter.name}: no split {adapter.train_split!r} (has {list(loaded)})",
            source=adapter.name,
            reason="empty",
        )
    train = [RawRows(f"{adapter.name}[{adapter.train_split}]", loaded[adapter.train_split])]
    evaluation = []
    if adapter.eval_split and adapter.eval_split in loaded:
        evaluation = [RawRows(f"{adapter.name}[{adapter.eval_split}]", loaded[adapter.eval_split])]
    return train, evaluation


def resolve_source(spec: SourceSpec) -> Source:
    """Decide what a ``--datasets`` entry means: tiny-sort, a registered name (Hub or ``name@copy``), a local
    copy whose path ends with a registered name, or plain local data."""
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
    path = Path(spec.name)
    if path.exists():
        return Source(spec, adapter_for_path(spec.name), path)
    raise DataValidationError(
        f"{spec.name}: no such file or folder, and not a registered dataset (known: tiny-sort, "
        f"{', '.join(registered_names())})",
        source=spec.name,
        reason="unknown dataset",
    )
