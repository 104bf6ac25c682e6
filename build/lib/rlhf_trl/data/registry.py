"""The registry of named datasets: how a Hub dataset's rows become our records.

Each ``DatasetAdapter`` says where a dataset lives (Hub id, config, splits) and converts one raw row into a record
of one kind (``pairwise``, ``sft`` or ``prompt_only``; see ``records.py``). Register your own with
``register_dataset``; DS-Chat's datasets are registered in ``adapters.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RecordProblem
from .records import KINDS

Converter = Callable[[dict], dict]


@dataclass(frozen=True)
class DatasetAdapter:
    """How to read one named dataset."""

    name: str = field(metadata={"help": "Registry name, e.g. 'Dahoas/rm-static' (DS-Chat's name)."})
    convert: Converter = field(
        metadata={
            "help": "Raw row -> record of `kind`. Raises RecordFiltered to leave a row out by design, "
            "RecordProblem for a malformed row."
        }
    )
    kind: str = field(metadata={"help": "Record kind the converter returns: pairwise, kwise, sft or prompt_only."})
    hub_path: str | None = field(default=None, metadata={"help": "Hub id for load_dataset; defaults to `name`."})
    hub_config: str | None = field(default=None, metadata={"help": "Hub config name, if the dataset needs one."})
    train_split: str = field(default="train", metadata={"help": "Split holding the training rows."})
    eval_split: str | None = field(
        default="test", metadata={"help": "Split holding evaluation rows; None: an automatic split is made."}
    )
    local_file_pattern: str = field(
        default="**/*", metadata={"help": "Glob of the data files inside a downloaded copy of the repository."}
    )
    aliases: tuple[str, ...] = field(default=(), metadata={"help": "Other names that select this dataset."})

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"adapter {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")

    def convert_row(self, row: object) -> dict:
        """``convert`` with schema surprises (a missing column, a wrong type) reported as a ``RecordProblem``."""
        if not isinstance(row, dict):
            raise RecordProblem(None, "not an object", f"got {type(row).__name__}")
        try:
            return self.convert(row)
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise RecordProblem(None, "unexpected schema", f"{self.name}: {type(error).__name__} {error}") from error


_REGISTRY: dict[str, DatasetAdapter] = {}


def register_dataset(adapter: DatasetAdapter, replace: bool = False) -> DatasetAdapter:
    """Make ``adapter`` selectable by its name and aliases in ``--datasets``; returns it."""
    for name in (adapter.name, *adapter.aliases):
        if name in _REGISTRY and not replace:
            raise ValueError(f"dataset {name!r} is already registered; pass replace=True to override it")
    for name in (adapter.name, *adapter.aliases):
        _REGISTRY[name] = adapter
    return adapter


def get_adapter(name: str) -> DatasetAdapter | None:
    """The adapter registered under ``name``, or None."""
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def adapter_for_path(path: str) -> DatasetAdapter | None:
    """The adapter whose name the path ends with (``/data/Dahoas/rm-static`` -> Dahoas/rm-static), as DS-Chat
    recognises local copies by name."""
    parts = Path(path.rstrip("/")).parts
    for length in (2, 1):
        if len(parts) >= length:
            adapter = _REGISTRY.get("/".join(parts[-length:]))
            if adapter is not None:
                return adapter
    return None
