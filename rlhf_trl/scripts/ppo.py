"""Step 3: PPO with our PPOTrainer (actor from SFT, critic and reward from step 2, frozen reference); with a
critic-free advantage estimator (advantage_estimator: grpo, rloo, ...) no critic is loaded.

rlhf-trl ppo --config recipes/tiny/ppo.yaml [--field value ...]
accelerate launch --config_file accelerate_configs/zero2.yaml -m rlhf_trl.scripts.ppo --config ...
"""

from __future__ import annotations

import sys
import time

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import ModelConfig

from rlhf_trl.configs import RunArguments
from rlhf_trl.data import DataArguments, load_step_datasets
from rlhf_trl.models import check_same_vocabulary, match_embeddings, resolve_model_name
from rlhf_trl.ppo.config import PPOConfig
from rlhf_trl.ppo.trainer import PPOTrainer, peak_rss_mib
from rlhf_trl.scripts.common import (
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
)
from rlhf_trl.steps import PPO

HYPERPARAMETERS = [
    "advantage_estimator",
    "num_generations",
    "loss_type",
    "learning_rate",
    "critic_learning_rate",
    "max_steps",
    "per_device_train_batch_size",
    "generation_batches",
    "num_mini_batches",
    "num_ppo_epochs",
    "gradient_accumulation_steps",
    "max_prompt_length",
    "max_new_tokens",
    "temperature",
    "kl_coef",
    "kl_estimator",
    "adaptive_kl",
    "reward_clip",
    "gamma",
    "lam",
    "cliprange",
    "cliprange_value",
    "whiten_advantages",
    "ema_beta",
    "ptx_coef",
    "rollout_backend",
    "seed",
]


def ptx_texts(data_args: DataArguments, datasets: list[str]):
    """PPO-ptx data: step-1 records of the given datasets flattened to plain text."""
    from dataclasses import replace

    from datasets import Dataset

    records = load_step_datasets(replace(data_args, datasets=datasets, eval_datasets=None), step=1).train
    texts = []
    for record in records:
        if "messages" in record and record["messages"]:
            texts.append(" ".join(message["content"] for message in record["messages"]))
        else:
            texts.append(record["prompt"] + record["completion"])
    return Dataset.from_dict({"text": texts})


def check_prompt_count(count: int, training_args: PPOConfig) -> None:
    """Every PPO step takes a whole batch of prompts on every process: fewer prompts than that cannot train."""
    processes = max(training_args.world_size, 1)
    needed = training_args.per_device_train_batch_size * processes
    if count < needed:
        raise StepError(
            f"the PPO prompt set has {count} prompt(s), but one batch needs {needed} "
            f"(per_device_train_batch_size {training_args.per_device_train_batch_size} x {processes} process(es)): "
            "add prompts or lower per_device_train_batch_size"
        )


def main(argv=None) -> int:
    parsed = parse_step_arguments((ModelConfig, DataArguments, PPOConfig, RunArguments), argv)
    model_args, data_args, training_args, run_args = parsed
    started = time.time()
    output = open_step_output(training_args, run_args)
    if not training_args.reward_model_path and not training_args.reward_funcs:
        raise StepError("PPO needs a reward: set reward_model_path and/or reward_funcs")
    if training_args.max_tokens_per_micro_batch is not None and "flash" in (model_args.attn_implementation or ""):
        raise StepError(
            f"max_tokens_per_micro_batch packs samples under a 4D attention mask, which attn_implementation "
            f"{model_args.attn_implementation} does not take: use sdpa or eager, or unset max_tokens_per_micro_batch"
        )
    actor_path = resolve_model_name(model_args.model_name_or_path)
    remote_code = {"trust_remote_code": training_args.trust_remote_code}
    tokenizer = load_tokenizer(actor_path, "actor model", training_args.pad_token, training_args.trust_remote_code)
    reward_tokenizer = None
    if training_args.reward_model_path:
        reward_path = resolve_model_name(training_args.reward_model_path)
        reward_tokenizer = load_pretrained(AutoTokenizer, reward_path, "reward model", **remote_code)
    value_path = None
    if training_args.uses_critic:
        value_path = resolve_model_name(training_args.value_model_path or training_args.reward_model_path)
        if value_path is None:
            raise StepError("without a reward model, set value_model_path to initialise the critic")
        # The critic reads the actor's token ids: its vocabulary must be the actor's (checked before any model loads).
        critic_tokenizer = load_tokenizer(
            value_path, "value model", training_args.pad_token, training_args.trust_remote_code
        )
        try:
            check_same_vocabulary(tokenizer, critic_tokenizer, f"value model {value_path}")
        except ValueError as error:
            raise StepError(str(error)) from error
    reward_funcs = load_functions(training_args.reward_funcs, "reward_funcs")
    gold_funcs = load_functions([run_args.gold_scorer], "gold_scorer") if run_args.gold_scorer else None
    data = load_step_datasets(data_args, step=3)
    print(data.summary)
    check_prompt_count(len(data.train), training_args)

    init_kwargs = {**model_init_kwargs(model_args), **remote_code}
    actor = load_pretrained(AutoModelForCausalLM, actor_path, "actor model", **init_kwargs)
    match_embeddings(actor, tokenizer)
    reference = None
    if not model_args.use_peft:
        # Loaded on its own rather than copied: under ZeRO-3 the actor's weights are already partitioned at load time,
        # and a copy of partitioned parameters is not a usable model. (With LoRA the reference is the base itself.)
        reference = load_pretrained(AutoModelForCausalLM, actor_path, "actor model", **init_kwargs)
        match_embeddings(reference, tokenizer)
    reward_model = None
    if reward_tokenizer is not None:
        reward_model = load_pretrained(
            AutoModelForSequenceClassification, reward_path, "reward model", num_labels=1, **remote_code
        )
        if reward_model.config.pad_token_id is None:
            reward_model.config.pad_token_id = reward_tokenizer.pad_token_id
    critic = None
    if value_path is not None:
        # With LoRA the critic's base may be quantized like the actor's; without it the critic trains in full
        # precision.
        critic_kwargs = init_kwargs if model_args.use_peft and training_args.critic_lora else remote_code
        critic = load_pretrained(
            AutoModelForSequenceClassification, value_path, "value model", num_labels=1, **critic_kwargs
        )
        match_embeddings(critic, tokenizer)

    trainer = PPOTrainer(
        args=training_args,
        processing_class=tokenizer,
        model=actor,
        ref_model=reference,
        value_model=critic,
        reward_model=reward_model,
        reward_processing_class=reward_tokenizer,
        reward_funcs=reward_funcs,
        gold_funcs=gold_funcs,
        train_dataset=data.train,
        eval_dataset=data.eval,
        ptx_dataset=ptx_texts(data_args, training_args.ptx_datasets) if training_args.ptx_datasets else None,
        peft_config=peft_config_or_none(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    final_metrics = trainer.evaluate() if data.eval is not None else {}
    if trainer.log_history:
        last = trainer.log_history[-1]
        final_metrics.update({key: value for key, value in last.items() if key.startswith(("objective/", "time/"))})
    # What a critic-free run saves against PPO: the process's peak memory and the mean wall time of a step.
    final_metrics["memory/peak_rss_mib"] = peak_rss_mib()
    steps_run = trainer.state["global_step"]
    if steps_run:
        final_metrics["time/mean_step_s"] = trainer.timings["step_s"] / steps_run
    final_metrics["rollout_backend"] = trainer.rollout_backend_in_use
    output.save_final(lambda folder: trainer.save_model(str(folder)))
    if trainer.accelerator.is_main_process:
        finish_step(output, PPO.name, parsed, HYPERPARAMETERS, final_metrics, started)
    return 0


def cli(argv=None) -> int:
    return run_step(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
