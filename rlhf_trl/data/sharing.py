"""Which steps share a dataset, and so how much of it this step takes.

``data_split`` (DS-Chat's ``2,4,4``) cuts a dataset between steps only when several steps read it:
- ``shared_by_steps`` (e.g. ``1,2,3``) says every listed step is given this same datasets list, as in DS-Chat; a
  dataset then feeds the listed steps DS-Chat's rule allows for its format (``STEPS_FED``).
- ``pipeline_configs`` names the recipes of steps 1-3 (``rlhf-trl e2e`` passes them); a dataset is shared by the
  steps whose recipes name it and that can use its format (``STEPS_USING``).
- Otherwise only this step reads it, and it takes the whole dataset.
The shares of steps that do not read a dataset are dropped from the ratio, so no part of it is left unused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .arguments import DataArguments, parse_steps
from .errors import DataValidationError
from .records import FORMAT_NAMES, STEPS_FED, STEPS_USING

# The keys of a recipe that name its data: ours and TRL's/alignment-handbook's (folded by DataArguments).
DATA_KEYS = (
    "datasets",
    "dataset_name",
    "dataset_config",
    "dataset_train_split",
    "dataset_test_split",
    "dataset_mixture",
)


@dataclass(frozen=True)
class StepPlan:
    """How one source is used in one step: the steps sharing it, this step's fraction, and why (for the summary)."""

    steps: tuple[int, ...]
    shares: tuple[float, float, float] | None  # None: the step takes the whole dataset
    reason: str

    @property
    def used(self) -> bool:
        return bool(self.steps)


def recipe_sources(path: str) -> set[tuple]:
    """Identities of the datasets a step recipe (YAML) names."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise DataValidationError(
            f"{path}: cannot read recipe ({error})", source=path, reason="unreadable file"
        ) from error
    if not isinstance(config, dict):
        raise DataValidationError(f"{path}: a recipe must be a YAML mapping", source=path, reason="unreadable file")
    data = {key: config[key] for key in DATA_KEYS if key in config}
    if not any(data.get(key) for key in ("datasets", "dataset_name", "dataset_mixture")):
        return set()  # a recipe that names no data (e.g. a step left out of this pipeline)
    try:
        return {source.identity for source in DataArguments(**data).sources}
    except ValueError as error:
        raise DataValidationError(f"{path}: {error}", source=path, reason="bad recipe") from error


def pipeline_readers(args: DataArguments) -> dict[int, set[tuple]] | None:
    """Step -> identities of the datasets its recipe names, from ``pipeline_configs`` (None when unset)."""
    if not args.pipeline_configs:
        return None
    return {step: recipe_sources(path) for step, path in enumerate(args.pipeline_configs, start=1)}


def _steps_text(steps) -> str:
    return ", ".join(map(str, steps))


def plan_for(identity: tuple, kind: str, step: int, args: DataArguments, readers: dict | None) -> StepPlan:
    """How much of a source of ``kind`` step ``step`` takes, and why."""
    if args.shared_by_steps is not None:
        listed = set(parse_steps(args.shared_by_steps)) | {step}
        steps = tuple(sorted(listed & set(STEPS_FED[kind])))
        rule = f"{FORMAT_NAMES[kind]} data given to steps {_steps_text(sorted(listed))} feeds step(s) "
        if step not in steps:
            return StepPlan((), None, f"not used in step {step}: {rule}{_steps_text(steps) or 'none of them'}")
    else:
        listed = {step}
        if readers is not None:
            listed |= {other for other, identities in readers.items() if identity in identities}
        steps = tuple(sorted(listed & set(STEPS_USING[kind])))
        if step not in steps:
            usable = _steps_text(STEPS_USING[kind])
            reason = f"not used in step {step}: it cannot use {FORMAT_NAMES[kind]} data (steps {usable} can)"
            return StepPlan((), None, reason)
    if len(steps) == 1:
        return StepPlan(steps, None, f"whole dataset: only step {step} reads it")
    split = args.step_shares
    shares = tuple(split[index] if index + 1 in steps else 0.0 for index in range(3))
    if sum(shares) == 0:
        raise DataValidationError(
            f"data_split {args.data_split!r} gives steps {_steps_text(steps)}, which share a dataset, none of it",
            reason="bad data_split",
        )
    total = sum(shares)
    shares = tuple(share / total for share in shares)
    parts = [part.strip() for part in args.data_split.split(",")]
    ratio = ",".join(parts[index - 1] for index in steps)
    reason = f"share {parts[step - 1]} of {ratio} (data_split {args.data_split}; steps {_steps_text(steps)} read it)"
    return StepPlan(steps, shares, reason)
