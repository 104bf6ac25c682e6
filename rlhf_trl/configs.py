"""Configuration shared by the step scripts: what is not already a field of TRL's configs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


@dataclass
class RunArguments:
    """Options every step script accepts besides TRL's training config, the model config and the data config."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Move the earlier contents of a non-empty output_dir aside (to <output_dir>.previous-<time>) and "
            "start afresh. Without it a step refuses to start there; --resume_from_checkpoint true continues it."
        },
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "With push_to_hub and a LoRA run: push the adapter merged into its base instead."},
    )
    gold_scorer: str | None = field(
        default=None,
        metadata={
            "help": "A reward function 'module:function' measuring true answer quality, logged beside the reward "
            "score so reward hacking is visible (the tiny task: 'rlhf_trl.tiny.task:gold_scores'). Never trained on."
        },
    )
    plots: bool = field(default=True, metadata={"help": "Write PNG plots of the metrics into output_dir."})
    num_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads for torch (default: torch's choice, one per core). Summation order, hence the "
            "last bits of every result, depends on it: the tiny recipes fix it to 1 so they give the same numbers "
            "on machines with different core counts."
        },
    )

    deterministic_algorithms: bool = field(
        default=False,
        metadata={
            "help": "Use torch's deterministic algorithms where an op has one (a warning names any op that has "
            "none). Unlike TrainingArguments' full_determinism this never stops a run."
        },
    )

    divergence_factor: float | None = field(
        default=10.0,
        metadata={
            "help": "SFT and reward steps: stop (exit code 2, final model not saved) when the logged training loss "
            "exceeds this many times its first-step value. NaN/inf losses always stop. 0 or None: only NaN/inf."
        },
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        check_ranges(
            self,
            {
                "divergence_factor": Range(above=1, optional=True, zero_means_off=True),
                "num_threads": Range(minimum=1, optional=True),
            },
        )


def apply_reproducibility(parsed) -> None:
    """Apply a step's reproducibility settings (RunArguments) and its training seed before anything is built: the
    seed must be set before the models load, since a freshly initialised head (the reward model's score head on a
    base LM) draws its weights at load time, before the trainer seeds anything."""
    import torch
    from transformers import TrainingArguments, set_seed

    for arguments in parsed:
        if isinstance(arguments, TrainingArguments):
            set_seed(arguments.seed)
        if isinstance(arguments, RunArguments):
            if arguments.num_threads:
                torch.set_num_threads(arguments.num_threads)
            if arguments.deterministic_algorithms:
                # Warnings, not errors, for ops without a deterministic version: a run must not stop over one.
                torch.use_deterministic_algorithms(True, warn_only=True)


# Validation of configuration values. Every field is checked before any model loads, so a bad value costs a second
# and one line instead of a traceback (or, worse, a run that silently does something else).


class ConfigError(ValueError):
    """A configuration value (YAML key or flag) that cannot work; the message is one line naming the field."""


@dataclass(frozen=True)
class Range:
    """Allowed values of one numeric field: ``minimum <= v <= maximum`` and ``above < v < below`` where given.

    optional: None is allowed. zero_means_off: 0 is allowed as "off" besides the range. also: other single values
    allowed besides the range (e.g. -1 for max_steps).
    """

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    optional: bool = False
    zero_means_off: bool = False
    also: tuple = ()

    def describe(self) -> str:
        def number(value) -> str:
            return str(int(value)) if float(value).is_integer() else f"{value:g}"

        parts = []
        if self.minimum is not None:
            parts.append(f">= {number(self.minimum)}")
        if self.above is not None:
            parts.append(f"> {number(self.above)}")
        if self.maximum is not None:
            parts.append(f"<= {number(self.maximum)}")
        if self.below is not None:
            parts.append(f"< {number(self.below)}")
        text = " and ".join(parts) or "a finite number"
        extras = [number(value) for value in self.also] + (["0 (off)"] if self.zero_means_off else [])
        extras += ["unset"] if self.optional else []
        return text + (f" (or {', '.join(extras)})" if extras else "")

    def allows(self, value) -> bool:
        if value is None:
            return self.optional
        if value in self.also or (self.zero_means_off and value == 0):
            return True
        if not math.isfinite(value):
            return False
        return (
            (self.minimum is None or value >= self.minimum)
            and (self.above is None or value > self.above)
            and (self.maximum is None or value <= self.maximum)
            and (self.below is None or value < self.below)
        )


def check_ranges(config, ranges: dict[str, Range]) -> None:
    """Raise ConfigError for the first field of ``config`` outside its Range (fields the config lacks are skipped)."""
    for name, allowed in ranges.items():
        if not hasattr(config, name):
            continue
        value = getattr(config, name)
        if not allowed.allows(value):
            raise ConfigError(f"{name} must be {allowed.describe()}, got {value!r}")


def _numeric_kind(annotation) -> tuple[str | None, bool]:
    """('int' | 'float' | None, optional) from a dataclass field's annotation (a string under postponed
    evaluation, a type otherwise). Only plain int/float fields, possibly optional, count as numeric."""
    if isinstance(annotation, str):
        text = annotation
    else:  # a class (int), or a typing construct (Optional[int], int | None) whose str() spells it out
        text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = text.replace("typing.", "").replace(" ", "")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional[") : -1] + "|None"
    if text.startswith("Union[") and text.endswith("]"):
        text = text[len("Union[") : -1].replace(",", "|")
    parts = set(text.split("|"))
    optional = bool(parts & {"None", "NoneType"})
    parts -= {"None", "NoneType"}
    if parts == {"int"}:
        return "int", optional
    if parts in ({"float"}, {"int", "float"}):
        return "float", optional
    return None, optional


def declared_type(spec, owner: type):
    """The annotation ``spec`` was declared with in ``owner`` or a base class. Transformers' argument parser
    rewrites ``Field.type`` in place (``float | None`` becomes ``float``) once a config class has been parsed, so
    the field object alone would make None look invalid for every later config of that class."""
    for klass in owner.__mro__:
        annotations = vars(klass).get("__annotations__", {})
        if spec.name in annotations:
            return annotations[spec.name]
    return spec.type


def check_field_types(config) -> None:
    """Every int/float field of a dataclass holds a number of its kind (no bool, no text, no list) and no NaN or
    infinity. YAML values are not converted by the command-line parser, so ``learning_rate: [1, 2]`` or
    ``max_steps: 1.5`` would otherwise travel far before failing."""
    for spec in fields(config):
        check_value_type(spec, getattr(config, spec.name), type(config))


def check_yaml_types(config: dict, dataclass_types) -> None:
    """The same check on a YAML mapping before the dataclasses are built: their own ``__post_init__`` (TRL's,
    Transformers') would otherwise fail on a list or text with a message that names no field."""
    specs = {spec.name: (spec, owner) for owner in dataclass_types for spec in fields(owner)}
    for name, value in config.items():
        if name not in specs:
            continue
        spec, owner = specs[name]
        kind, _ = _numeric_kind(declared_type(spec, owner))
        if isinstance(value, str) and kind is not None:
            # YAML 1.1 reads 1e-5 (no dot) as text; the command-line parser converts it like a flag's value.
            try:
                value = int(value) if kind == "int" else float(value)
            except ValueError:
                pass
        check_value_type(spec, value, owner)


def check_value_type(spec, value, owner: type) -> None:
    """Raise ConfigError unless ``value`` suits the numeric field ``spec`` of the dataclass ``owner`` (non-numeric
    fields are not checked)."""
    kind, optional = _numeric_kind(declared_type(spec, owner))
    if kind is None:
        return
    what = "an integer" if kind == "int" else "a number"
    if value is None:
        if optional or spec.default is None:
            return
        raise ConfigError(f"{spec.name} must be {what}, got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{spec.name} must be {what}, got {type(value).__name__} {value!r}")
    if kind == "int" and not isinstance(value, int):
        raise ConfigError(f"{spec.name} must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{spec.name} must be a finite number, got {value!r}")


# Fields every TrainingArguments subclass (SFTConfig, RewardConfig, PPOConfig) shares.
TRAINING_RANGES = {
    "per_device_train_batch_size": Range(minimum=1),
    "per_device_eval_batch_size": Range(minimum=1),
    "gradient_accumulation_steps": Range(minimum=1),
    "eval_accumulation_steps": Range(minimum=1, optional=True),
    "learning_rate": Range(above=0),
    "weight_decay": Range(minimum=0),
    "adam_beta1": Range(minimum=0, below=1),
    "adam_beta2": Range(minimum=0, below=1),
    "adam_epsilon": Range(above=0),
    "max_grad_norm": Range(minimum=0),
    "num_train_epochs": Range(above=0),
    "max_steps": Range(minimum=1, also=(-1,)),
    "warmup_steps": Range(minimum=0),
    "logging_steps": Range(above=0),
    "save_steps": Range(minimum=0),
    "eval_steps": Range(minimum=0, optional=True),  # PPO: 0 turns evaluation off
    "save_total_limit": Range(minimum=1, optional=True),
    "seed": Range(minimum=0, below=2**32),
    "data_seed": Range(minimum=0, below=2**32, optional=True),
    "dataloader_num_workers": Range(minimum=0),
    "label_smoothing_factor": Range(minimum=0, below=1),
    # SFTConfig and RewardConfig
    "max_length": Range(minimum=1, optional=True),
    "center_rewards_coefficient": Range(minimum=0, optional=True),
}

MODEL_RANGES = {
    "lora_r": Range(minimum=1),
    "lora_alpha": Range(above=0),
    "lora_dropout": Range(minimum=0, below=1),
}


def check_training_arguments(training_args) -> None:
    """Types and ranges of the TrainingArguments fields (and SFT/reward additions) our steps use."""
    check_field_types(training_args)
    check_ranges(training_args, TRAINING_RANGES)


def check_reward_function_spec(spec: str, what: str) -> None:
    """Import a 'module:function' spec now, so a typo fails before any model loads."""
    from rlhf_trl.reward.sources import load_reward_function

    try:
        load_reward_function(spec)
    except ValueError as error:
        raise ConfigError(f"{what}: {error}") from error


def check_parsed_arguments(parsed) -> None:
    """Checks of a step's parsed (model, data, training, run) arguments that the dataclasses cannot make alone:
    TRL's own configs (ModelConfig, SFTConfig, RewardConfig) and importing the named reward functions."""
    from transformers import TrainingArguments

    folders = {}  # option -> (path, whether a tokenizer is loaded from it)
    for arguments in parsed:
        if isinstance(arguments, TrainingArguments):
            check_training_arguments(arguments)
            for spec in getattr(arguments, "reward_funcs", None) or []:
                check_reward_function_spec(spec, "reward_funcs")
            folders["reward_model_path"] = (getattr(arguments, "reward_model_path", None), True)
            folders["value_model_path"] = (getattr(arguments, "value_model_path", None), False)
        elif type(arguments).__name__ == "ModelConfig":
            check_field_types(arguments)
            check_ranges(arguments, MODEL_RANGES)
            folders["model_name_or_path"] = (arguments.model_name_or_path, True)
        elif isinstance(arguments, RunArguments) and arguments.gold_scorer:
            check_reward_function_spec(arguments.gold_scorer, "gold_scorer")
    check_model_folders(folders)


def check_model_folders(folders: dict[str, tuple[str | None, bool]]) -> None:
    """Local model folders named by the options are complete (weights, config, tokenizer) before anything loads.
    Hub names and paths that do not exist are left to the loading code, which reports them."""
    from pathlib import Path

    from rlhf_trl.models import model_folder_problem

    for option, (path, needs_tokenizer) in folders.items():
        if not path or not (Path(path).expanduser() / "config.json").is_file():
            continue
        problem = model_folder_problem(Path(path).expanduser(), needs_tokenizer)
        if problem:
            raise ConfigError(f"{option}: {problem}")
