"""``DataArguments``: which datasets each step reads and how they are split, checked and cached.

Parsed by ``TrlParser`` next to TRL's configs, so no field may share a name with ``TrainingArguments``,
``SFTConfig`` or ``RewardConfig`` (that is why the split seed is ``data_split_seed``: ``data_seed`` belongs to
``TrainingArguments``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

RECORD_FORMATS = ("auto", "text", "conversational")


@dataclass(frozen=True)
class SourceSpec:
    """One entry of ``datasets``/``eval_datasets`` taken apart: ``name[@local_path][:weight]``."""

    name: str
    local_path: str | None = None
    weight: float = 1.0

    @property
    def label(self) -> str:
        """How the source is named in messages and summaries."""
        return f"{self.name}@{self.local_path}" if self.local_path else self.name


def parse_source_spec(spec: str) -> SourceSpec:
    """Split ``"Dahoas/rm-static:2"``, ``"Dahoas/rm-static@/data/rm-static"`` or ``"data/pairs.jsonl"``.

    A trailing ``:number`` is a mixing weight; anything else after a colon stays part of the name.
    """
    text = spec.strip()
    if not text:
        raise ValueError("empty dataset name in --datasets")
    weight = 1.0
    head, colon, tail = text.rpartition(":")
    if colon and head:
        try:
            weight = float(tail)
        except ValueError:
            head = ""  # not a weight: the colon belongs to the name
        else:
            text = head
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"dataset weight must be a positive number, got {spec!r}")
    name, at, local_path = text.partition("@")
    if at and not (name and local_path):
        raise ValueError(f"expected 'registry-name@local-path', got {spec!r}")
    return SourceSpec(name=name, local_path=local_path or None, weight=weight)


def parse_data_split(text: str) -> tuple[float, float, float]:
    """``"2,4,4"`` -> shares (0.2, 0.4, 0.4) of steps 1, 2 and 3; raises ValueError explaining the format."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 3 or any(not math.isfinite(value) or value < 0 for value in values) or sum(values) <= 0:
        raise ValueError(f"data_split must be three non-negative numbers like '2,4,4' (steps 1,2,3), got {text!r}")
    total = sum(values)
    return tuple(value / total for value in values)


@dataclass
class DataArguments:
    """Where the training data comes from and how it is prepared for one step of the pipeline."""

    datasets: list[str] = field(
        metadata={
            "help": "Data sources: registry names (DS-Chat's, e.g. 'Dahoas/rm-static', or 'tiny-sort'), local files "
            "(.json, .jsonl, .parquet, .csv) or folders of them. Optional mixing weight 'name:2'; a local copy of "
            "a registry dataset as 'name@/path/to/copy'."
        }
    )
    data_split: str = field(
        default="2,4,4",
        metadata={
            "help": "Shares of every multi-step dataset given to steps 1, 2 and 3 (DS-Chat's --data_split). Each "
            "step gets a disjoint, seeded part. SFT-only and prompt-only datasets are not split."
        },
    )
    eval_datasets: list[str] | None = field(
        default=None,
        metadata={
            "help": "Explicit evaluation sources (same forms as --datasets); otherwise the sources' own eval "
            "splits or an automatic seeded split of --eval_split_ratio."
        },
    )
    eval_split_ratio: float = field(
        default=0.05,
        metadata={
            "help": "Share of a step's records held out for evaluation when a source has no eval split. "
            "0 disables the automatic eval split."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many training records (after mixing and shuffling)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many evaluation records."})
    max_prompt_length_chars: int | None = field(
        default=None, metadata={"help": "Prompts longer than this many characters are invalid records."}
    )
    skip_invalid_records: bool = field(
        default=False,
        metadata={
            "help": "Skip invalid records and count them in the printed summary instead of stopping with an "
            "error naming the file, record and field."
        },
    )
    data_split_seed: int = field(
        default=1234, metadata={"help": "Seed of the step shares, the eval split, mixing and shuffling."}
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder for processed data, keyed by a fingerprint of the source contents and these "
            "arguments; a changed file gets a new entry. Unset: no cache."
        },
    )
    record_format: str = field(
        default="auto",
        metadata={
            "help": "'auto' keeps each source's format; 'conversational' turns 'Human: ... Assistant: ...' "
            "transcripts into TRL messages; 'text' turns messages into transcripts.",
            "choices": list(RECORD_FORMATS),
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        if isinstance(self.eval_datasets, str):
            self.eval_datasets = [self.eval_datasets]
        if not self.datasets:
            raise ValueError("datasets is empty: name at least one dataset (e.g. --datasets tiny-sort)")
        for spec in [*self.datasets, *(self.eval_datasets or [])]:
            parse_source_spec(spec)
        parse_data_split(self.data_split)
        if not 0.0 <= self.eval_split_ratio < 1.0:
            raise ValueError(f"eval_split_ratio must be in [0, 1), got {self.eval_split_ratio}")
        for name in ("max_train_samples", "max_eval_samples", "max_prompt_length_chars"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or unset), got {value}")
        if self.record_format not in RECORD_FORMATS:
            raise ValueError(f"record_format must be one of {RECORD_FORMATS}, got {self.record_format!r}")

    @property
    def data_seed(self) -> int:
        """The split seed under its DS-Chat-style name (a property, so it does not clash in the parser)."""
        return self.data_split_seed

    @property
    def sources(self) -> list[SourceSpec]:
        return [parse_source_spec(spec) for spec in self.datasets]

    @property
    def eval_sources(self) -> list[SourceSpec]:
        return [parse_source_spec(spec) for spec in self.eval_datasets or []]

    @property
    def step_shares(self) -> tuple[float, float, float]:
        return parse_data_split(self.data_split)
