"""Configuration shared by the step scripts: what is not already a field of TRL's configs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunArguments:
    """Options every step script accepts besides TRL's training config, the model config and the data config."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow writing into a non-empty output_dir. Without it a step refuses to start there."},
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


def apply_reproducibility(parsed) -> None:
    """Apply a step's reproducibility settings before anything is built: the CPU thread count (RunArguments) and,
    with the training config's ``full_determinism``, deterministic algorithms (warnings for ops that have none,
    instead of errors) and the seed."""
    import torch

    for arguments in parsed:
        if isinstance(arguments, RunArguments) and arguments.num_threads:
            torch.set_num_threads(arguments.num_threads)
        if getattr(arguments, "full_determinism", False):
            from transformers.trainer_utils import enable_full_determinism

            enable_full_determinism(arguments.seed, warn_only=True)
