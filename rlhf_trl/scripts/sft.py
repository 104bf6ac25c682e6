"""Step 1: supervised fine-tuning with TRL's SFTTrainer (loss on the completion by default).

rlhf-trl sft --config recipes/tiny/sft.yaml [--field value ...]
accelerate launch --config_file accelerate_configs/zero2.yaml -m rlhf_trl.scripts.sft --config ...
"""

from __future__ import annotations

import sys
import time

from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, SFTConfig, SFTTrainer

from rlhf_trl.configs import RunArguments
from rlhf_trl.data import DataArguments, load_step_datasets
from rlhf_trl.models import ensure_pad_token, match_embeddings, resolve_model_name
from rlhf_trl.scripts.common import (
    MetricsFileCallback,
    finish_step,
    load_pretrained,
    model_init_kwargs,
    parse_step_arguments,
    peft_config_or_none,
    prepare_output_dir,
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
    "warmup_steps",
    "weight_decay",
    "max_length",
    "completion_only_loss",
    "gradient_checkpointing",
    "seed",
]


def gold_prompts(dataset, limit: int = 200) -> list[str]:
    """Text prompts of an eval set (conversational prompts and whole `messages` chats have no gold scorer)."""
    if not dataset or "prompt" not in dataset.column_names:
        return []
    return [prompt for prompt in dataset["prompt"][:limit] if isinstance(prompt, str)]


def mean_gold_score(gold_function, model, tokenizer, prompts: list[str], max_new_tokens: int = 32) -> float:
    """Mean gold score of the model's greedy answers (generated in eval mode, as the chat command does)."""
    from rlhf_trl.chat import ChatSession, GenerationSettings

    was_training = model.training
    model.eval()
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=64)
    completions = ChatSession(model, tokenizer, settings).complete(list(prompts))
    model.train(was_training)
    scores = gold_function(prompts=list(prompts), completions=completions)
    return float(sum(scores) / len(scores))


def main(argv=None) -> int:
    parsed = parse_step_arguments((ModelConfig, DataArguments, SFTConfig, RunArguments), argv)
    model_args, data_args, training_args, run_args = parsed
    started = time.time()
    output_dir = prepare_output_dir(training_args.output_dir, run_args.overwrite_output_dir)
    model_path = resolve_model_name(model_args.model_name_or_path)
    tokenizer = load_pretrained(AutoTokenizer, model_path, "model")
    ensure_pad_token(tokenizer)
    data = load_step_datasets(data_args, step=1)
    print(data.summary)

    model = load_pretrained(AutoModelForCausalLM, model_path, "model", **model_init_kwargs(model_args))
    match_embeddings(model, tokenizer)
    final_metrics = {}
    gold_function, prompts = None, gold_prompts(data.eval)
    if run_args.gold_scorer and prompts:
        from rlhf_trl.rewards import load_reward_function

        gold_function = load_reward_function(run_args.gold_scorer)
        final_metrics["base_gold_score"] = mean_gold_score(gold_function, model, tokenizer, prompts)

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=peft_config_or_none(model_args),
        callbacks=[MetricsFileCallback(output_dir)],
    )
    trainable_in_float32_on_cpu(trainer.model)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(str(output_dir))
    if data.eval is not None:
        final_metrics.update(trainer.evaluate())
    if gold_function is not None:
        final_metrics["eval_gold_score"] = mean_gold_score(gold_function, trainer.model, tokenizer, prompts)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(output_dir))
        finish_step(output_dir, "sft", parsed, HYPERPARAMETERS, final_metrics, started)
    return 0


def cli(argv=None) -> int:
    return run_step(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
