"""Step 1: supervised fine-tuning with TRL's SFTTrainer (loss on the completion by default).

rlhf-trl sft --config recipes/tiny/sft.yaml [--field value ...]
accelerate launch --config_file accelerate_configs/zero2.yaml -m rlhf_trl.scripts.sft --config ...
"""

from __future__ import annotations

import logging
import sys
import time

from transformers import AutoModelForCausalLM
from trl import ModelConfig, SFTConfig, SFTTrainer

from rlhf_trl.configs import RunArguments
from rlhf_trl.data import DataArguments, load_step_datasets
from rlhf_trl.guards import DivergenceCallback
from rlhf_trl.models import match_embeddings, resolve_model_name
from rlhf_trl.scripts.common import (
    MetricsFileCallback,
    StepError,
    finish_step,
    load_functions,
    load_pretrained,
    load_tokenizer,
    model_init_kwargs,
    open_step_output,
    parse_step_arguments,
    peft_config_or_none,
    run_step,
    train_and_save_final,
)
from rlhf_trl.steps import SFT

logger = logging.getLogger(__name__)

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


def as_prompt_completion(dataset, name: str):
    """``messages`` records as conversational prompt/completion: the last assistant turn is the completion and every
    turn before it the prompt. TRL's SFTTrainer then trains on the completion only (``completion_only_loss``), which
    works with any chat template; ``assistant_only_loss`` would need ``{% generation %}`` markers in the template.
    Turns after the last assistant turn are left out (logged)."""
    if dataset is None or "messages" not in dataset.column_names:
        return dataset
    trailing = 0

    def split(record):
        nonlocal trailing
        messages = record["messages"]
        last = max((index for index, message in enumerate(messages) if message["role"] == "assistant"), default=None)
        if last is None:
            raise StepError(f"{name}: a 'messages' record has no assistant turn to train on")
        trailing += len(messages) - last - 1
        return {"prompt": messages[:last], "completion": [messages[last]]}

    converted = dataset.map(split, remove_columns=["messages"], desc=f"{name}: last assistant turn as completion")
    if trailing:
        logger.warning(
            "%s: %d turns after the last assistant turn of their conversation were left out", name, trailing
        )
    return converted


def gold_prompts(dataset, limit: int = 1000) -> list:
    """Prompts (text or conversations) of an eval set with a 'prompt' column; none for plain-text eval sets."""
    if dataset is None or "prompt" not in dataset.column_names:
        return []
    return list(dataset["prompt"][:limit])


def mean_gold_score(
    gold_function, model, tokenizer, prompts: list, max_new_tokens: int = 32, accelerator=None
) -> float:
    """Mean gold score of the model's greedy answers (generated in eval mode by ``rlhf_trl.generation.Generator``, as
    chat and evaluation generate); the gold function receives TRL's forms, as a reward function does. ``model`` may
    be partitioned by ZeRO-3 (loaded under ``zero.Init``, or the trainer's engine with ``accelerator``): generation
    sees the full weights."""
    from rlhf_trl.generation import GenerationSettings, Generator, as_completions
    from rlhf_trl.ppo.rollout import gathered_policy

    with gathered_policy(model, accelerator) as policy:
        was_training = policy.training
        policy.eval()
        settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=64)
        completions = Generator(policy, tokenizer, settings).complete(list(prompts))
        policy.train(was_training)
    scores = gold_function(prompts=list(prompts), completions=as_completions(prompts, completions))
    return float(sum(scores) / len(scores))


def main(argv=None) -> int:
    parsed = parse_step_arguments((ModelConfig, DataArguments, SFTConfig, RunArguments), argv)
    model_args, data_args, training_args, run_args = parsed
    started = time.time()
    output = open_step_output(training_args, run_args)
    output_dir = output.path
    model_path = resolve_model_name(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_path, "model", training_args.pad_token, training_args.trust_remote_code)
    gold_functions = load_functions([run_args.gold_scorer] if run_args.gold_scorer else None, "gold_scorer")
    data = load_step_datasets(data_args, step=1)
    print(data.summary)
    train_dataset = as_prompt_completion(data.train, "train_dataset")
    eval_dataset = as_prompt_completion(data.eval, "eval_dataset")

    init_kwargs = {**model_init_kwargs(model_args), "trust_remote_code": training_args.trust_remote_code}
    model = load_pretrained(AutoModelForCausalLM, model_path, "model", **init_kwargs)
    match_embeddings(model, tokenizer)
    final_metrics = {}
    gold_function, prompts = None, gold_prompts(eval_dataset)
    if gold_functions and not prompts:
        logger.warning("gold_scorer is set but the eval set has no prompts: no gold score is measured")
    if gold_functions and prompts:
        gold_function = gold_functions[0]
        final_metrics["base_gold_score"] = mean_gold_score(gold_function, model, tokenizer, prompts)

    divergence = DivergenceCallback(run_args.divergence_factor)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config_or_none(model_args),
        callbacks=[MetricsFileCallback(output_dir), divergence],
    )
    train_and_save_final(trainer, tokenizer, output, divergence, training_args.resume_from_checkpoint)
    if data.eval is not None:
        final_metrics.update(trainer.evaluate())
    if gold_function is not None:
        final_metrics["eval_gold_score"] = mean_gold_score(
            gold_function, trainer.model_wrapped, tokenizer, prompts, accelerator=trainer.accelerator
        )
    if trainer.accelerator.is_main_process:
        finish_step(output, SFT.name, parsed, HYPERPARAMETERS, final_metrics, started)
    return 0


def cli(argv=None) -> int:
    return run_step(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
