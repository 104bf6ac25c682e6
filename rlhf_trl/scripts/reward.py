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
from rlhf_trl.rewards import RewardModelScorer
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
    trainable_in_float32_on_cpu,
)

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


def pair_scores(model, tokenizer, dataset, limit: int = 1000) -> dict[str, list[float]]:
    """Scores of chosen and rejected answers of a pairwise eval set, read as in training (see RewardModelScorer)."""
    scorer = RewardModelScorer(model, tokenizer, batch_size=32)
    records = dataset.select(range(min(limit, len(dataset))))
    prompts = list(records["prompt"])
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
        from rlhf_trl.kwise import KWiseRewardTrainer

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
    trainable_in_float32_on_cpu(trainer.model)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    divergence.raise_if_diverged()  # before saving: a diverged model must not become the step's result

    def save(folder):
        trainer.save_model(str(folder))
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(str(folder))

    output.save_final(save)
    final_metrics = trainer.evaluate() if data.eval is not None else {}
    if trainer.accelerator.is_main_process:
        if data.eval is not None and not ranked:
            scores = pair_scores(trainer.model, tokenizer, data.eval)
            (output_dir / "eval_scores.json").write_text(json.dumps(scores))
            chosen, rejected = scores["chosen"], scores["rejected"]
            final_metrics["eval_pair_accuracy"] = sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)
            final_metrics["eval_mean_chosen_score"] = sum(chosen) / len(chosen)
            final_metrics["eval_mean_rejected_score"] = sum(rejected) / len(rejected)
        finish_step(output, "reward", parsed, HYPERPARAMETERS, final_metrics, started)
    return 0


def cli(argv=None) -> int:
    return run_step(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
