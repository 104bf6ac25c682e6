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

    deterministic_algorithms: bool = field(
        default=False,
        metadata={
            "help": "Use torch's deterministic algorithms where an op has one (a warning names any op that has "
            "none). Unlike TrainingArguments' full_determinism this never stops a run."
        },
    )


def apply_reproducibility(parsed) -> None:
    """Apply a step's reproducibility settings (RunArguments) before anything is built."""
    import torch

    for arguments in parsed:
        if isinstance(arguments, RunArguments):
            if arguments.num_threads:
                torch.set_num_threads(arguments.num_threads)
            if arguments.deterministic_algorithms:
                # Warnings, not errors, for ops without a deterministic version: a run must not stop over one.
                torch.use_deterministic_algorithms(True, warn_only=True)
