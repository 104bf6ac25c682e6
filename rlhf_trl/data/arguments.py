"""``DataArguments``: which datasets each step reads and how they are split, checked and cached.

Parsed by ``TrlParser`` next to TRL's configs, so no field may share a name with ``TrainingArguments``,
``SFTConfig`` or ``RewardConfig`` (that is why the split seed is ``data_split_seed``: ``data_seed`` belongs to
``TrainingArguments``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

RECORD_FORMATS = ("auto", "text", "conversational")


# Options of a dataset entry, as ``name,key=value,...`` or as keys of a YAML mapping; TRL's ``DatasetConfig`` and
# the alignment-handbook's mixture entries use the names in ``OPTION_ALIASES``.
SPEC_OPTIONS = ("config", "split", "eval_split", "revision", "data_dir", "data_files", "columns", "weight", "fraction")
OPTION_ALIASES = {"path": "name", "id": "name", "name": "config", "test_split": "eval_split"}
TEXT_OPTION_ALIASES = {"name": "config", "test_split": "eval_split"}


@dataclass(frozen=True)
class SourceSpec:
    """One entry of ``datasets``/``eval_datasets`` taken apart.

    Text form: ``name[@local_path][,option=value...][:weight]``, e.g. ``trl-lib/ultrafeedback_binarized``,
    ``HuggingFaceH4/ultrafeedback_binarized,split=train_prefs:0.5`` or ``Dahoas/rm-static@/data/copy``. Mapping
    form (YAML): TRL's ``{path, name, split, data_dir, data_files, columns, fraction}`` or the alignment-handbook's
    ``{id, config, split, columns, weight}``.
    """

    name: str
    local_path: str | None = None
    weight: float = 1.0
    config: str | None = None
    split: str | None = None
    eval_split: str | None = None
    revision: str | None = None
    data_dir: str | None = None
    data_files: object = None
    columns: tuple[str, ...] | None = None
    fraction: float | None = None

    @property
    def label(self) -> str:
        """How the source is named in messages and summaries."""
        text = f"{self.name}@{self.local_path}" if self.local_path else self.name
        for option in ("config", "split", "eval_split", "revision", "data_dir"):
            if getattr(self, option) is not None:
                text += f",{option}={getattr(self, option)}"
        if self.data_files is not None:
            text += f",data_files={self.data_files}"
        return text

    @property
    def identity(self) -> tuple:
        """What makes two entries the same data, whatever their mixing weights."""
        files = json.dumps(self.data_files, sort_keys=True) if self.data_files is not None else None
        return (self.name, self.local_path, self.config, self.split, self.revision, self.data_dir, files, self.columns)

    @property
    def hub_options(self) -> dict:
        """Keyword arguments of ``datasets.load_dataset`` this entry sets."""
        options = {"revision": self.revision, "data_dir": self.data_dir, "data_files": self.data_files}
        return {key: value for key, value in options.items() if value is not None}


def _check_weight(value: object, spec: object, option: str = "weight") -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = float("nan")
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"dataset {option} must be a positive number, got {spec!r}")
    return weight


def _spec_from_options(name: str, local_path: str | None, options: dict, spec: object) -> SourceSpec:
    unknown = sorted(set(options) - set(SPEC_OPTIONS))
    if unknown:
        raise ValueError(f"dataset {spec!r}: unknown option(s) {unknown}; known: {', '.join(SPEC_OPTIONS)}")
    values = dict(options)
    values["weight"] = _check_weight(values.get("weight", 1.0), spec)
    if values.get("fraction") is not None:
        values["fraction"] = _check_weight(values["fraction"], spec, "fraction")
    columns = values.get("columns")
    if isinstance(columns, str):
        columns = columns.split("+")
    if columns is not None:
        if not isinstance(columns, (list, tuple)) or not all(isinstance(column, str) for column in columns):
            raise ValueError(f"dataset {spec!r}: columns must be a list of column names")
        values["columns"] = tuple(columns)
    for option in ("config", "split", "eval_split", "revision", "data_dir"):
        if values.get(option) is not None:
            values[option] = str(values[option])
    return SourceSpec(name=name, local_path=local_path, **values)


def parse_source_spec(spec: str | dict | SourceSpec) -> SourceSpec:
    """Split ``"Dahoas/rm-static:2"``, ``"Dahoas/rm-static@/data/rm-static"``, ``"data/pairs.jsonl"``,
    ``"org/name,config=default,split=train_prefs"`` or a TRL/alignment-handbook mapping into a ``SourceSpec``.

    A trailing ``:number`` is a mixing weight; anything else after a colon stays part of the name.
    """
    if isinstance(spec, SourceSpec):
        return spec
    if isinstance(spec, dict):
        return _parse_mapping(spec)
    text = str(spec).strip()
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
            weight = _check_weight(weight, spec)
    text, *option_parts = text.split(",")
    options = {}
    for part in option_parts:
        key, equals, value = part.partition("=")
        if not equals or not key.strip() or not value.strip():
            raise ValueError(f"dataset {spec!r}: expected options as ',key=value', got {part!r}")
        options[TEXT_OPTION_ALIASES.get(key.strip(), key.strip())] = value.strip()
    options.setdefault("weight", weight)
    name, at, local_path = text.partition("@")
    if at and not (name and local_path):
        raise ValueError(f"expected 'registry-name@local-path', got {spec!r}")
    return _spec_from_options(name, local_path or None, options, spec)


def _parse_mapping(mapping: dict) -> SourceSpec:
    """TRL's ``DatasetConfig`` keys (path, name=config, ...) or the alignment-handbook's (id, config, ...)."""
    options = {}
    for key, value in mapping.items():
        options[OPTION_ALIASES.get(key, key)] = value
    name = options.pop("name", None)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset entry {mapping!r} has no 'path' (TRL) or 'id' (alignment-handbook)")
    local_path = options.pop("local_path", None)
    options = {key: value for key, value in options.items() if value is not None}
    return _spec_from_options(name.strip(), local_path, options, mapping)


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

    datasets: list[str] | None = field(
        default=None,
        metadata={
            "help": "Data sources: Hub dataset ids in TRL's formats ('trl-lib/ultrafeedback_binarized', with options "
            "',config=...,split=...,eval_split=...,revision=...'), DS-Chat's names ('Dahoas/rm-static') or "
            "'tiny-sort', local files (.json, .jsonl, .parquet, .csv) or folders of them. Optional mixing weight "
            "'name:2'; a local copy of a named dataset as 'name@/path/to/copy'. In YAML, entries may also be TRL "
            "DatasetConfig mappings ({path, name, split, columns, ...})."
        },
    )
    data_split: str = field(
        default="2,4,4",
        metadata={
            "help": "Shares of steps 1, 2 and 3 in a dataset that several steps read (DS-Chat's --data_split). Each "
            "of those steps gets a disjoint, seeded part; the shares of steps that do not read it are dropped from "
            "the ratio. A dataset only this step reads is used whole."
        },
    )
    shared_by_steps: str | None = field(
        default=None,
        metadata={
            "help": "Steps that are all given this same datasets list, as DS-Chat gives every step the same "
            "--data_path: e.g. '1,2,3'. Then preference and ranking data are cut between those steps by data_split, "
            "SFT data feeds step 1 and prompt-only data step 3. Unset: see pipeline_configs."
        },
    )
    pipeline_configs: list[str] | None = field(
        default=None,
        metadata={
            "help": "The YAML recipes of steps 1, 2 and 3 of the pipeline this step belongs to, in that order "
            "('rlhf-trl e2e' passes them). A dataset that several of them name is cut between those steps by "
            "data_split. Ignored when shared_by_steps is set. Neither set: every dataset is used whole by this step."
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
    # TRL's and the alignment-handbook's data keys, so the data section of their recipes works unchanged. They are
    # folded into ``datasets`` when the arguments are created.
    dataset_name: str | None = field(
        default=None, metadata={"help": "TRL ScriptArguments: one dataset (same forms as a --datasets entry)."}
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "TRL ScriptArguments: config name of dataset_name."}
    )
    dataset_train_split: str = field(
        default="train", metadata={"help": "TRL ScriptArguments: training split of dataset_name."}
    )
    dataset_test_split: str = field(
        default="test",
        metadata={"help": "TRL ScriptArguments: evaluation split of dataset_name (used when the dataset has it)."},
    )
    dataset_streaming: bool = field(
        default=False, metadata={"help": "TRL ScriptArguments: streaming is not supported here; must stay false."}
    )
    dataset_mixture: dict | None = field(
        default=None,
        metadata={
            "help": "alignment-handbook mixture (YAML): {datasets: [{id, config, split, columns, weight}], seed, "
            "test_split_size}."
        },
    )
    streaming: bool = field(
        default=False, metadata={"help": "TRL DatasetMixtureConfig: streaming is not supported; must stay false."}
    )
    test_split_size: float | None = field(
        default=None,
        metadata={
            "help": "TRL/alignment-handbook: records held out for evaluation, a share (< 1) or a count (>= 1) of "
            "each source without an eval split; overrides eval_split_ratio."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.datasets, (str, dict)):
            self.datasets = [self.datasets]
        if isinstance(self.eval_datasets, (str, dict)):
            self.eval_datasets = [self.eval_datasets]
        if isinstance(self.pipeline_configs, str):
            self.pipeline_configs = [self.pipeline_configs]
        self.datasets = list(self.datasets or []) + self._folded_trl_keys()
        if not self.datasets:
            raise ValueError(
                "no datasets given: set datasets (e.g. --datasets tiny-sort), dataset_name or dataset_mixture"
            )
        for spec in [*self.datasets, *(self.eval_datasets or [])]:
            parse_source_spec(spec)
        parse_data_split(self.data_split)
        from rlhf_trl.configs import Range, check_field_types, check_ranges

        check_field_types(self)
        check_ranges(self, {"data_split_seed": Range(minimum=0, below=2**32)})
        if self.shared_by_steps is not None:
            parse_steps(self.shared_by_steps)
        if self.pipeline_configs is not None and len(self.pipeline_configs) != 3:
            raise ValueError(
                f"pipeline_configs must name the recipes of steps 1, 2 and 3, got {len(self.pipeline_configs)}"
            )
        if self.dataset_streaming or self.streaming:
            raise ValueError("streaming datasets are not supported: set dataset_streaming/streaming to false")
        if self.test_split_size is not None and not self.test_split_size > 0:
            raise ValueError(f"test_split_size must be positive, got {self.test_split_size}")
        if not 0.0 <= self.eval_split_ratio < 1.0:
            raise ValueError(f"eval_split_ratio must be in [0, 1), got {self.eval_split_ratio}")
        for name in ("max_train_samples", "max_eval_samples", "max_prompt_length_chars"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or unset), got {value}")
        if self.record_format not in RECORD_FORMATS:
            raise ValueError(f"record_format must be one of {RECORD_FORMATS}, got {self.record_format!r}")

    def _folded_trl_keys(self) -> list:
        """``dataset_name`` and ``dataset_mixture`` as ``datasets`` entries; they are cleared once folded, so that
        ``dataclasses.replace`` does not add them twice."""
        entries = []
        if self.dataset_name is not None:
            entry = {"path": self.dataset_name, "name": self.dataset_config}
            # TRL's defaults ("train", "test") leave the choice to the source, which knows its own splits.
            if self.dataset_train_split != "train":
                entry["split"] = self.dataset_train_split
            if self.dataset_test_split != "test":
                entry["eval_split"] = self.dataset_test_split
            entries.append(entry)
        elif self.dataset_config is not None:
            raise ValueError("dataset_config is set but dataset_name is not")
        if self.dataset_mixture is not None:
            mixture = self.dataset_mixture
            if not isinstance(mixture, dict) or not isinstance(mixture.get("datasets"), list):
                raise ValueError("dataset_mixture must be a mapping with a 'datasets' list (alignment-handbook form)")
            unknown = sorted(set(mixture) - {"datasets", "seed", "test_split_size"})
            if unknown:
                raise ValueError(f"dataset_mixture: unknown keys {unknown}; known: datasets, seed, test_split_size")
            entries.extend(mixture["datasets"])
            if mixture.get("test_split_size") is not None and self.test_split_size is None:
                self.test_split_size = float(mixture["test_split_size"])
        self.dataset_name = self.dataset_config = self.dataset_mixture = None
        self.dataset_train_split, self.dataset_test_split = "train", "test"
        return entries

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
    def source_labels(self) -> list[str]:
        return [source.label for source in self.sources]

    @property
    def step_shares(self) -> tuple[float, float, float]:
        return parse_data_split(self.data_split)


def parse_steps(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` or ``"2,3"`` -> (1, 2, 3) / (2, 3); raises ValueError explaining the format."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts or any(part not in ("1", "2", "3") for part in parts):
        raise ValueError(f"shared_by_steps must list steps 1, 2, 3 like '1,2,3', got {text!r}")
    return tuple(sorted({int(part) for part in parts}))
