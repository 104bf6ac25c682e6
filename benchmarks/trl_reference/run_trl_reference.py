"""Outside reference for the critic-free estimators: TRL's own GRPOTrainer or RLOOTrainer on the tiny sorting task.

Trains the SFT model of step 1 against the reward model of step 2 (both folders given by path) on the prompts of
the embedded ``tiny-sort`` dataset for a fixed budget of sampled completions, then answers the held-out prompts
greedily and prints one JSON object: the held-out gold score (rlhf_trl.tiny.task:gold_scores) before and after,
the reward-model score after, the training wall time and the settings. See README.md next to this file.

    python benchmarks/trl_reference/run_trl_reference.py --trainer grpo \\
        --sft-model outputs/tiny/step1_sft --reward-model outputs/tiny/step2_reward --num-samples 5120
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from rlhf_trl.data import tiny_sort
from rlhf_trl.ppo.group_batches import group_batch_sizes
from rlhf_trl.ppo.losses import TRL_LOSS_TYPES
from rlhf_trl.tiny.task import gold_scores

TRAINERS = ("grpo", "rloo")
# TRL's GRPOConfig.loss_type names that aggregate as one of ours (rlhf_trl.ppo.losses.LOSS_TYPES).
GRPO_LOSS_TYPES = tuple(name for names in TRL_LOSS_TYPES.values() for name in names)


class BadInput(ValueError):
    """Bad command-line input: reported on one line, exit code 2."""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run TRL's GRPOTrainer or RLOOTrainer on the tiny sorting task and print the held-out gold score "
        "and wall time as JSON."
    )
    parser.add_argument("--trainer", choices=TRAINERS, required=True, help="TRL trainer to run.")
    parser.add_argument("--sft-model", required=True, help="Step-1 SFT model folder (the policy's start).")
    parser.add_argument("--reward-model", required=True, help="Step-2 reward model folder (sequence classification).")
    parser.add_argument("--output-dir", required=True, help="Where TRL writes the trained policy and result.json.")
    parser.add_argument(
        "--num-samples", type=int, default=5120, help="Sample budget: completions generated for training in all."
    )
    parser.add_argument("--prompts-per-step", type=int, default=8, help="Prompts per optimizer step (per process).")
    parser.add_argument("--num-generations", type=int, default=8, help="Completions per prompt (group size G).")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="max_completion_length.")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=None, help="KL coefficient; default: the trainer's own.")
    parser.add_argument(
        "--loss-type", choices=GRPO_LOSS_TYPES, default=None, help="GRPO only: TRL loss_type; default: TRL's (dapo)."
    )
    parser.add_argument(
        "--scale-rewards", choices=("group", "batch", "none"), default=None, help="GRPO only; default: TRL's."
    )
    parser.add_argument("--eval-prompts", type=int, default=200, help="Held-out prompts answered greedily (max 200).")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--skip-initial-eval", action="store_true", help="Do not score the SFT model before training (saves time)."
    )
    return parser


def check_arguments(arguments: argparse.Namespace) -> None:
    """Everything that can be checked before loading a model."""
    for option, folder in (("--sft-model", arguments.sft_model), ("--reward-model", arguments.reward_model)):
        if not (Path(folder) / "config.json").is_file():
            raise BadInput(f"{option} {folder}: no model folder here (no config.json)")
    for option in ("num_samples", "prompts_per_step", "num_generations", "max_new_tokens", "eval_prompts"):
        if getattr(arguments, option) < 1:
            raise BadInput(f"--{option.replace('_', '-')} must be >= 1, got {getattr(arguments, option)}")
    if arguments.num_generations < 2:
        raise BadInput(f"--num-generations {arguments.num_generations}: GRPO and RLOO compare 2 or more completions")
    if arguments.trainer == "rloo" and (arguments.loss_type or arguments.scale_rewards):
        raise BadInput("--loss-type and --scale-rewards are GRPO options; RLOOTrainer has a sequence-level loss")


class RewardModelReward:
    """The step-2 reward model as a TRL reward function, read through the project's scorer (the format it was
    trained on). TRL decodes the completion alone, which drops the leading space the tiny task's answers start
    with; it is put back so the reward model reads prompt and answer as it saw them in training."""

    __name__ = "reward_model"

    def __init__(self, folder: str):
        from rlhf_trl.reward.sources import RewardModelScorer

        self.scorer = RewardModelScorer.from_pretrained(folder)

    def __call__(self, prompts, completions, **_columns) -> list[float]:
        spaced = [
            " " + completion if isinstance(completion, str) and not completion[:1].isspace() else completion
            for completion in completions
        ]
        return self.scorer(prompts, spaced)


def held_out_scores(model_folder: str, reward: RewardModelReward, count: int, max_new_tokens: int) -> dict:
    """Greedy answers of the model in ``model_folder`` to the held-out prompts: mean gold and reward-model score."""
    from rlhf_trl.inference.evaluate import generate_answers

    prompts = [record["prompt"] for record in tiny_sort.eval_records(3)][:count]
    answers = generate_answers(model_folder, prompts, max_new_tokens)
    gold = gold_scores(prompts, answers)
    return {"gold_score": sum(gold) / len(gold), "score": sum(reward(prompts, answers)) / len(answers)}


def build_trainer(arguments: argparse.Namespace, reward: RewardModelReward, world_size: int):
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    sizes = group_batch_sizes(arguments.prompts_per_step, arguments.num_generations, num_processes=world_size)
    completions_per_step = sizes.global_rollout_batch_size
    max_steps = arguments.num_samples // completions_per_step
    if max_steps < 1:
        raise BadInput(
            f"--num-samples {arguments.num_samples} is less than one step of {completions_per_step} completions "
            f"({arguments.prompts_per_step} prompts x {arguments.num_generations} x {world_size} processes)"
        )
    options = {
        "output_dir": arguments.output_dir,
        "per_device_train_batch_size": sizes.per_device_rollout_batch_size,  # TRL counts completions
        "gradient_accumulation_steps": 1,
        "num_generations": arguments.num_generations,
        "max_completion_length": arguments.max_new_tokens,
        "max_steps": max_steps,
        "learning_rate": arguments.learning_rate,
        "lr_scheduler_type": "constant",
        "temperature": arguments.temperature,
        "seed": arguments.seed,
        "logging_steps": max(1, max_steps // 10),
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,  # TRL defaults to bf16, which CPUs run slowly and tiny models do not need
        "gradient_checkpointing": False,  # TRL turns it on by default; a tiny model only pays its recompute cost
        "use_cpu": not torch.cuda.is_available(),
    }
    if arguments.beta is not None:
        options["beta"] = arguments.beta
    if arguments.trainer == "grpo":
        if arguments.loss_type is not None:
            options["loss_type"] = arguments.loss_type
        if arguments.scale_rewards is not None:
            options["scale_rewards"] = arguments.scale_rewards
        config_class, trainer_class = GRPOConfig, GRPOTrainer
    else:
        config_class, trainer_class = RLOOConfig, RLOOTrainer
    config = config_class(**options)
    tokenizer = AutoTokenizer.from_pretrained(arguments.sft_model)
    train_prompts = Dataset.from_list([{"prompt": record["prompt"]} for record in tiny_sort.train_records(3)])
    trainer = trainer_class(
        model=arguments.sft_model,
        reward_funcs=[reward],
        args=config,
        train_dataset=train_prompts,
        processing_class=tokenizer,
    )
    return trainer, config, max_steps, completions_per_step


def run(arguments: argparse.Namespace) -> dict:
    check_arguments(arguments)
    import trl

    reward = RewardModelReward(arguments.reward_model)
    eval_count = min(arguments.eval_prompts, tiny_sort.EVAL_PROMPTS)
    before = None
    if not arguments.skip_initial_eval:
        before = held_out_scores(arguments.sft_model, reward, eval_count, arguments.max_new_tokens)
    trainer, config, max_steps, completions_per_step = build_trainer(arguments, reward, world_size=1)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    trainer.save_model(arguments.output_dir)
    trainer.processing_class.save_pretrained(arguments.output_dir)
    after = held_out_scores(arguments.output_dir, reward, eval_count, arguments.max_new_tokens)
    result = {
        "trainer": f"trl.{type(trainer).__name__}",
        "trl_version": trl.__version__,
        "samples": max_steps * completions_per_step,
        "steps": max_steps,
        "num_generations": arguments.num_generations,
        "loss_type": getattr(config, "loss_type", None),
        "scale_rewards": getattr(config, "scale_rewards", None),
        "beta": config.beta,
        "learning_rate": arguments.learning_rate,
        "eval_prompts": eval_count,
        "initial_eval_gold_score": None if before is None else before["gold_score"],
        "eval_gold_score": after["gold_score"],
        "eval_score": after["score"],
        "train_wall_time_s": round(train_seconds, 2),
    }
    if not math.isfinite(result["eval_gold_score"]):
        raise RuntimeError("the held-out gold score is not finite")
    Path(arguments.output_dir, "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    from rlhf_trl.inference.eval_inputs import EvalInputError
    from rlhf_trl.reward.sources import RewardModelError

    arguments = make_parser().parse_args(argv)
    try:
        result = run(arguments)
    except (BadInput, EvalInputError, RewardModelError) as error:
        print(f"run_trl_reference: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
