"""Outside reference for the critic-free estimators: TRL's own GRPOTrainer or RLOOTrainer on the tiny sorting task.

Trains the SFT model of step 1 against the reward model of step 2 (both folders given by path) on the prompts of
the embedded ``tiny-sort`` dataset for a fixed budget of sampled completions, answering the held-out prompts
greedily every ``--eval-every-samples`` completions and at the end. Prints one JSON object (also written to
``result.json``): the held-out gold score (rlhf_trl.tiny.task:gold_scores) before and after, the reward-model score
after, the curve of both against samples and training time, the training time, peak memory and the settings.
See README.md next to this file.

    python benchmarks/trl_reference/run_trl_reference.py --trainer grpo \\
        --sft-model outputs/tiny/step1_sft --reward-model outputs/tiny/step2_reward --num-samples 6400
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
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
        "--num-samples",
        type=int,
        default=6400,
        help="Sample budget: completions generated for training in all (the tiny PPO recipe's 100 steps x 64).",
    )
    parser.add_argument("--prompts-per-step", type=int, default=8, help="Prompts per optimizer step (per process).")
    parser.add_argument("--num-generations", type=int, default=8, help="Completions per prompt (group size G).")
    parser.add_argument(
        "--mini-batches",
        type=int,
        default=2,
        help="Optimizer steps per pass over one generation batch (TRL steps_per_generation; our num_mini_batches).",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="Passes over one generation batch (TRL num_iterations; ours: num_ppo_epochs).",
    )
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
    parser.add_argument(
        "--normalize-advantages",
        action="store_true",
        help="RLOO only: TRL normalize_advantages (as our whiten_advantages, which rloo.yaml sets).",
    )
    parser.add_argument(
        "--eval-prompts",
        type=int,
        default=1000,
        help="Held-out prompts answered greedily, the first ones of tiny-sort's held-out set (all 1000 by default, "
        "as the tiny recipes' eval_prompts_limit).",
    )
    parser.add_argument(
        "--eval-every-samples",
        type=int,
        default=3200,
        help="Also evaluate on the held-out prompts each time this many completions were trained on (the tiny PPO "
        "recipe's eval_steps 50 x 64); 0: only at the end.",
    )
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
    for option in (
        "num_samples",
        "prompts_per_step",
        "num_generations",
        "mini_batches",
        "epochs",
        "max_new_tokens",
        "eval_prompts",
    ):
        if getattr(arguments, option) < 1:
            raise BadInput(f"--{option.replace('_', '-')} must be >= 1, got {getattr(arguments, option)}")
    if arguments.eval_every_samples < 0:
        raise BadInput(f"--eval-every-samples must be >= 0, got {arguments.eval_every_samples}")
    if arguments.num_generations < 2:
        raise BadInput(f"--num-generations {arguments.num_generations}: GRPO and RLOO compare 2 or more completions")
    if arguments.trainer == "rloo" and (arguments.loss_type or arguments.scale_rewards):
        raise BadInput("--loss-type and --scale-rewards are GRPO options; RLOOTrainer has a sequence-level loss")
    if arguments.trainer == "grpo" and arguments.normalize_advantages:
        raise BadInput("--normalize-advantages is an RLOO option; GRPO scales rewards with --scale-rewards")


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


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepSizes:
    """How a sample budget maps onto TRL's optimizer steps. One generation batch (``rollout`` completions: prompts
    per step x G) is split into ``mini_batches`` optimizer steps and passed over ``epochs`` times, so it takes
    ``mini_batches x epochs`` optimizer steps, as one PPO step of ours does (num_mini_batches x num_ppo_epochs)."""

    def __init__(self, arguments: argparse.Namespace, world_size: int):
        sizes = group_batch_sizes(
            arguments.prompts_per_step,
            arguments.num_generations,
            num_processes=world_size,
            num_mini_batches=arguments.mini_batches,
        )
        self.rollout = sizes.global_rollout_batch_size
        self.per_device_train_batch = sizes.per_device_mini_batch_size
        self.optimizer_steps_per_rollout = arguments.mini_batches * arguments.epochs
        self.rollouts = arguments.num_samples // self.rollout
        self.max_steps = self.rollouts * self.optimizer_steps_per_rollout

    def samples_after(self, optimizer_step: int) -> int | None:
        """Completions trained on when ``optimizer_step`` ends a generation batch; None in the middle of one."""
        if optimizer_step % self.optimizer_steps_per_rollout:
            return None
        return optimizer_step // self.optimizer_steps_per_rollout * self.rollout


def build_trainer(arguments: argparse.Namespace, reward: RewardModelReward, world_size: int):
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    try:
        steps = StepSizes(arguments, world_size)
    except ValueError as error:
        raise BadInput(str(error)) from error
    if steps.rollouts < 1:
        raise BadInput(
            f"--num-samples {arguments.num_samples} is less than one step of {steps.rollout} completions "
            f"({arguments.prompts_per_step} prompts x {arguments.num_generations} x {world_size} processes)"
        )
    options = {
        "output_dir": arguments.output_dir,
        "per_device_train_batch_size": steps.per_device_train_batch,  # TRL counts completions
        "gradient_accumulation_steps": 1,
        "steps_per_generation": arguments.mini_batches,
        "num_iterations": arguments.epochs,
        "num_generations": arguments.num_generations,
        "max_completion_length": arguments.max_new_tokens,
        "max_steps": steps.max_steps,
        "learning_rate": arguments.learning_rate,
        "lr_scheduler_type": "constant",
        "temperature": arguments.temperature,
        "seed": arguments.seed,
        "logging_steps": steps.optimizer_steps_per_rollout,
        "save_strategy": "no",
        "report_to": "none",
        "disable_dropout": True,  # as our PPO (DS-Chat): the first pass's ratio must be exactly 1
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
        if arguments.normalize_advantages:
            options["normalize_advantages"] = True
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
    return trainer, config, steps


def held_out_curve_callback(steps: StepSizes, evaluate, eval_every_samples: int):
    """A TrainerCallback that times each optimizer step (on_step_begin to on_step_end: generation, scoring and the
    update, as our PPO's time/* metrics) and, when a generation batch ends at a multiple of ``eval_every_samples``
    completions (and at the last step), calls ``evaluate(model, tokenizer) -> {"gold_score", "score"}``. Evaluation
    is outside the timed span. ``callback.curve`` collects {samples, train_time_s, gold_score, score}."""
    from transformers import TrainerCallback

    class HeldOutCurve(TrainerCallback):
        def __init__(self):
            self.train_time_s = 0.0
            self.curve: list[dict] = []
            self._started = None

        def on_step_begin(self, args, state, control, **kwargs):
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            self.train_time_s += time.perf_counter() - self._started
            samples = steps.samples_after(state.global_step)
            if samples is None:
                return
            due = eval_every_samples and samples % eval_every_samples == 0
            if due or state.global_step == steps.max_steps:
                scores = evaluate(model, processing_class)
                self.curve.append({"samples": samples, "train_time_s": round(self.train_time_s, 4), **scores})

    return HeldOutCurve()


def run(arguments: argparse.Namespace) -> dict:
    check_arguments(arguments)
    import trl

    reward = RewardModelReward(arguments.reward_model)
    eval_count = min(arguments.eval_prompts, tiny_sort.EVAL_PROMPTS)
    before = None
    if not arguments.skip_initial_eval:
        before = held_out_scores(arguments.sft_model, reward, eval_count, arguments.max_new_tokens)
    trainer, config, steps = build_trainer(arguments, reward, world_size=1)
    snapshot = Path(arguments.output_dir, "held_out_snapshot")

    def evaluate(model, tokenizer) -> dict:
        # Through a saved copy: the same loading, rendering and cutting as the final evaluation and rlhf-trl eval.
        model.save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)
        return held_out_scores(str(snapshot), reward, eval_count, arguments.max_new_tokens)

    curve = held_out_curve_callback(steps, evaluate, arguments.eval_every_samples)
    trainer.add_callback(curve)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    shutil.rmtree(snapshot, ignore_errors=True)
    trainer.save_model(arguments.output_dir)
    trainer.processing_class.save_pretrained(arguments.output_dir)
    after = held_out_scores(arguments.output_dir, reward, eval_count, arguments.max_new_tokens)
    result = {
        "trainer": f"trl.{type(trainer).__name__}",
        "trl_version": trl.__version__,
        "seed": arguments.seed,
        "samples": steps.rollouts * steps.rollout,
        "steps": steps.rollouts,
        "optimizer_steps": steps.max_steps,
        "prompts_per_step": arguments.prompts_per_step,
        "num_generations": arguments.num_generations,
        "mini_batches": arguments.mini_batches,
        "epochs": arguments.epochs,
        "loss_type": getattr(config, "loss_type", None),
        "scale_rewards": getattr(config, "scale_rewards", None),
        "beta": config.beta,
        "learning_rate": arguments.learning_rate,
        "temperature": arguments.temperature,
        "normalize_advantages": getattr(config, "normalize_advantages", None),
        "eval_prompts": eval_count,
        "initial_eval_gold_score": None if before is None else before["gold_score"],
        "initial_eval_score": None if before is None else before["score"],
        "eval_gold_score": after["gold_score"],
        "eval_score": after["score"],
        "train_time_s": round(curve.train_time_s, 2),
        "train_wall_time_s": round(train_seconds, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "curve": curve.curve,
        # TRL's own per-logging-step metrics (reward, kl, entropy, grad_norm, clip ratios): the training curves.
        "log_history": trainer.state.log_history,
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
    print(json.dumps({key: value for key, value in result.items() if key != "log_history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
