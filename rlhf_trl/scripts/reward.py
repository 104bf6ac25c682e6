"""Step 2: reward model with TRL's RewardTrainer (pairwise loss), or the K-wise trainer for ranked answers.

rlhf-trl reward --config recipes/tiny/reward.yaml [--field value ...]
"""

from __future__ import annotations

import json
import sys
import time

from transformers import AutoModelForSequenceClassification
from trl import ModelConfig, RewardConfig, RewardTrainer

from rlhf_trl.configs import RunArguments
from rlhf_trl.data import DataArguments, load_step_datasets
from rlhf_trl.guards import DivergenceCallback
from rlhf_trl.models import match_embeddings, resolve_model_name
from rlhf_trl.reward.sources import RewardModelScorer
from rlhf_trl.scripts.common import (
    MetricsFileCallback,
    finish_step,
    load_pretrained,
    load_tokenizer,
    model_init_kwargs,
    open_step_output,
    parse_step_arguments,
    peft_config_or_none,
    run_step,
    train_and_save_final,
)
from rlhf_trl.steps import REWARD

HYPERPARAMETERS = [
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "weight_decay",
    "max_length",
    "center_rewards_coefficient",
    "seed",
]


def pair_scores(model, tokenizer, dataset, limit: int = 1000, accelerator=None) -> dict[str, list[float]]:
    """Scores of chosen and rejected answers of a pairwise eval set, read as in training (see RewardModelScorer).
    ``model`` may be the trainer's ZeRO-3 engine (with ``accelerator``): it is scored with its full weights, and
    then every process must call this."""
    from rlhf_trl.ppo.rollout import gathered_policy

    records = dataset.select(range(min(limit, len(dataset))))
    prompts = list(records["prompt"])
    with gathered_policy(model, accelerator) as scored:
        scorer = RewardModelScorer(scored, tokenizer, batch_size=32)
        return {
            "chosen": scorer.score(prompts, list(records["chosen"])).tolist(),
            "rejected": scorer.score(prompts, list(records["rejected"])).tolist(),
        }


def main(argv=None) -> int:
    parsed = parse_step_arguments((ModelConfig, DataArguments, RewardConfig, RunArguments), argv)
    model_args, data_args, training_args, run_args = parsed
    started = time.time()
    output = open_step_output(training_args, run_args)
    output_dir = output.path
    model_path = resolve_model_name(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_path, "model", training_args.pad_token, training_args.trust_remote_code)
    data = load_step_datasets(data_args, step=2)
    print(data.summary)
    init_kwargs = {**model_init_kwargs(model_args), "trust_remote_code": training_args.trust_remote_code}
    model = load_pretrained(AutoModelForSequenceClassification, model_path, "model", num_labels=1, **init_kwargs)
    match_embeddings(model, tokenizer)
    ranked = "responses" in data.train.column_names
    trainer_class = RewardTrainer
    if ranked:
        from rlhf_trl.reward.kwise import KWiseRewardTrainer

        trainer_class = KWiseRewardTrainer
    divergence = DivergenceCallback(run_args.divergence_factor)
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=peft_config_or_none(model_args),
        callbacks=[MetricsFileCallback(output_dir), divergence],
    )
    train_and_save_final(trainer, tokenizer, output, divergence, training_args.resume_from_checkpoint)
    final_metrics = trainer.evaluate() if data.eval is not None else {}
    # Every process scores (under ZeRO-3 gathering the weights is collective); the main one writes.
    pairwise_eval = data.eval is not None and not ranked
    if pairwise_eval:
        scores = pair_scores(trainer.model_wrapped, tokenizer, data.eval, accelerator=trainer.accelerator)
    if trainer.accelerator.is_main_process:
        if pairwise_eval:
            (output_dir / "eval_scores.json").write_text(json.dumps(scores))
            chosen, rejected = scores["chosen"], scores["rejected"]
            final_metrics["eval_pair_accuracy"] = sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)
            final_metrics["eval_mean_chosen_score"] = sum(chosen) / len(chosen)
            final_metrics["eval_mean_rejected_score"] = sum(rejected) / len(rejected)
        finish_step(output, REWARD.name, parsed, HYPERPARAMETERS, final_metrics, started)
    return 0


def cli(argv=None) -> int:
    return run_step(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
