"""Configuration shared by the step scripts: what is not already a field of TRL's configs."""

from __future__ import annotations

from dataclasses import dataclass, field


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
