"""Which inherited TrainingArguments settings PPOTrainer honours, and which it refuses.

PPOConfig inherits TrainingArguments so that TRL users keep their flags, but PPOTrainer is not a ``Trainer``: a
setting it has no use for must not be accepted and then ignored. Every field falls in one of the lists below (a test
walks all of them); a refused field set to anything but its default stops the run at start with one line. Also
the allowed ranges of PPOConfig's own numeric fields and of the generation_kwargs it checks.
"""

from __future__ import annotations

import dataclasses

from rlhf_trl.configs import ConfigError, Range
from rlhf_trl.ppo.run_logger import requested_trackers

# Inherited fields PPO reads (where: optim.py, run_logger.py, trainer.py, distributed.py, scripts/ppo.py, common.py).
HONOURED = frozenset(
    {
        "output_dir",
        "per_device_train_batch_size",
        "num_train_epochs",
        "max_steps",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "optim",
        "optim_args",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "gradient_accumulation_steps",
        "max_grad_norm",
        "bf16",
        "fp16",
        "gradient_checkpointing",
        "logging_strategy",
        "logging_steps",
        "disable_tqdm",
        "report_to",
        "run_name",
        "project",
        "eval_strategy",
        "eval_steps",
        "save_strategy",
        "save_steps",
        "save_total_limit",
        "push_to_hub",
        "hub_token",
        "hub_private_repo",
        "hub_model_id",
        "hub_strategy",
        "seed",
        "use_cpu",
        "resume_from_checkpoint",
    }
)

# Fields Transformers' own Trainer does not act on either (scripts or launchers read them); accepted as they are.
NOT_READ_BY_TRAINER = {
    "do_train": "read by scripts, not by Trainer",
    "do_eval": "read by scripts, not by Trainer (set when eval_strategy is not 'no')",
    "do_predict": "read by scripts, not by Trainer",
    "local_rank": "set by the launcher; Accelerate reads the process rank from the environment",
    "remove_unused_columns": "PPO always keeps every dataset column: reward functions receive them",
}

# Settings accepted only with these values (the others need a Trainer feature PPO does not have).
ALLOWED_VALUES = {
    "logging_strategy": ("steps",),
    "save_strategy": ("no", "steps"),
    "eval_strategy": ("no", "steps"),
    "optim": (
        "adamw_torch",
        "adamw_torch_fused",
        "adafactor",
        "adamw_bnb_8bit",
        "adamw_8bit",
        "paged_adamw_8bit",
        "paged_adamw_32bit",
        "sgd",
        "adagrad",
        "rmsprop",
    ),
}

# Why a refused field cannot be honoured, shown in the one-line error.
REFUSED = {
    "lr_scheduler_kwargs": "PPO's actor and critic schedules take no extra arguments",
    "optim_target_modules": "only GaLore/APOLLO optimizers use it, and PPO does not offer them",
    "average_tokens_across_devices": "PPO's losses are per-micro-batch masked means",
    "label_smoothing_factor": "PPO has no labels",
    "bf16_full_eval": "PPO evaluates with the training precision",
    "fp16_full_eval": "PPO evaluates with the training precision",
    "tf32": "set torch.backends matmul precision in your launcher instead",
    "activation_checkpointing": "use gradient_checkpointing",
    "activation_checkpointing_kwargs": "use gradient_checkpointing",
    "gradient_checkpointing_kwargs": "PPO enables gradient checkpointing with the model's defaults",
    "torch_compile": "PPO does not compile its models",
    "torch_compile_backend": "PPO does not compile its models",
    "torch_compile_mode": "PPO does not compile its models",
    "use_liger_kernel": "PPO computes its own log-probs from logits",
    "liger_kernel_config": "PPO computes its own log-probs from logits",
    "use_cache": "generation always uses the KV cache, training never does",
    "neftune_noise_alpha": "NEFTune is an SFT technique",
    "torch_empty_cache_steps": "PPO does not empty the device cache on a schedule",
    "auto_find_batch_size": "PPO's batch sizes are derived once from the configuration",
    "logging_first_step": "PPO logs every logging_steps steps and the last step",
    "logging_nan_inf_filter": "PPO stops on a NaN/inf loss instead of filtering it",
    "include_num_input_tokens_seen": "PPO logs episodes and response lengths instead",
    "log_level": "set logging in your launcher instead",
    "log_level_replica": "set logging in your launcher instead",
    "log_on_each_node": "only the main process logs",
    "trackio_space_id": "trackio runs locally; set TRACKIO_SPACE_ID for a Space",
    "trackio_bucket_id": "trackio runs locally",
    "trackio_static_space_id": "trackio runs locally",
    "eval_delay": "evaluation runs every eval_steps from the start",
    "per_device_eval_batch_size": "evaluation generates in batches of per_device_train_batch_size",
    "prediction_loss_only": "PPO evaluation scores answers; it has no prediction loss",
    "eval_on_start": "PPO evaluates every eval_steps",
    "eval_do_concat_batches": "PPO evaluation has no predictions to concatenate",
    "eval_use_gather_object": "PPO evaluation has no predictions to gather",
    "eval_accumulation_steps": "PPO evaluation has no predictions to accumulate",
    "include_for_metrics": "PPO evaluation has no compute_metrics",
    "batch_eval_metrics": "PPO evaluation has no compute_metrics",
    "save_only_model": "PPO checkpoints always hold what a resume needs",
    "save_on_each_node": "only the main process writes checkpoints",
    "enable_jit_checkpoint": "PPO saves on save_steps only",
    "hub_always_push": "the final model is pushed once, at the end",
    "hub_revision": "the final model is pushed to the main branch",
    "load_best_model_at_end": "PPO keeps the last model (eval_strategy 'best' is not supported)",
    "metric_for_best_model": "PPO keeps the last model",
    "greater_is_better": "PPO keeps the last model",
    "ignore_data_skip": "a resume restores the prompt sampler's position exactly",
    "restore_callback_states_from_checkpoint": "PPOTrainer has no callbacks",
    "full_determinism": "set seed; PPO does not switch torch to deterministic algorithms",
    "data_seed": "prompt order follows seed",
    "accelerator_config": "pass Accelerate settings through accelerate launch --config_file",
    "parallelism_config": "pass parallelism settings through accelerate launch --config_file",
    "dataloader_drop_last": "PPO samples prompts itself (incomplete batches are always left out and counted)",
    "dataloader_num_workers": "PPO samples prompts itself, without a DataLoader",
    "dataloader_pin_memory": "PPO samples prompts itself, without a DataLoader",
    "dataloader_persistent_workers": "PPO samples prompts itself, without a DataLoader",
    "dataloader_prefetch_factor": "PPO samples prompts itself, without a DataLoader",
    "dataloader_multiprocessing_context": "PPO samples prompts itself, without a DataLoader",
    "dataloader_in_order": "PPO samples prompts itself, without a DataLoader",
    "label_names": "PPO has no labels",
    "train_sampling_strategy": "PPO shuffles prompts each epoch with seed",
    "length_column_name": "PPO does not group prompts by length",
    "ddp_find_unused_parameters": "pass DDP settings through accelerate launch --config_file",
    "ddp_bucket_cap_mb": "pass DDP settings through accelerate launch --config_file",
    "ddp_broadcast_buffers": "pass DDP settings through accelerate launch --config_file",
    "ddp_static_graph": "pass DDP settings through accelerate launch --config_file",
    "ddp_backend": "pass DDP settings through accelerate launch --config_file",
    "ddp_timeout": "pass DDP settings through accelerate launch --config_file",
    "fsdp": "PPO runs under DDP or DeepSpeed (accelerate launch --config_file)",
    "fsdp_config": "PPO runs under DDP or DeepSpeed (accelerate launch --config_file)",
    "deepspeed": "give the DeepSpeed config to accelerate launch --config_file (see accelerate_configs/)",
    "debug": "PPO has no Trainer debug modes",
    "skip_memory_metrics": "PPO does not track memory metrics",
}


def field_default(config_field: dataclasses.Field):
    if config_field.default is not dataclasses.MISSING:
        return config_field.default
    if config_field.default_factory is not dataclasses.MISSING:
        return config_field.default_factory()
    return dataclasses.MISSING


def _plain(value):
    """Enum members (OptimizerNames, IntervalStrategy, ...) compare by their string value."""
    return getattr(value, "value", value)


def is_default(value, default) -> bool:
    """Whether a value means the field's default. The command-line parser turns some defaults into another form
    (include_num_input_tokens_seen 'no' -> False), so every "off" spelling counts as the same value."""
    value, default = _plain(value), _plain(default)
    off = (None, False, "no", "", [], {})
    return value == default or (value in off and default in off)


def check_inherited_fields(config) -> None:
    """Raise ConfigError (one line) for an inherited setting PPO cannot honour. Call before TrainingArguments'
    ``__post_init__``, which rewrites some fields (report_to, do_eval), so the user's own values are checked."""
    for config_field in dataclasses.fields(config):
        name = config_field.name
        value = _plain(getattr(config, name))
        if name in REFUSED and not is_default(value, field_default(config_field)):
            raise ConfigError(f"{name}={value!r} is not supported by PPO ({REFUSED[name]}): remove it")
        if name in ALLOWED_VALUES and value not in ALLOWED_VALUES[name]:
            raise ConfigError(f"{name} must be one of {ALLOWED_VALUES[name]} for PPO, got {value!r}")
    requested_trackers(config.report_to)  # an unknown tracker or a missing package stops the run here
    if config.push_to_hub and _plain(config.hub_strategy) != "end":
        raise ConfigError(
            f"hub_strategy={_plain(config.hub_strategy)!r} is not supported by PPO (the final model is pushed once, "
            "at the end): set hub_strategy: end"
        )


# Allowed values of PPOConfig's numeric fields (TrainingArguments' own are in rlhf_trl.configs.TRAINING_RANGES).
PPO_RANGES = {
    "critic_learning_rate": Range(above=0),
    "generation_batches": Range(minimum=1),
    "num_mini_batches": Range(minimum=1),
    "num_ppo_epochs": Range(minimum=1),
    "num_generations": Range(minimum=1),
    "max_prompt_length": Range(minimum=1),
    "max_new_tokens": Range(minimum=1),
    "min_new_tokens": Range(minimum=0),
    # Sampling is always on (do_sample), so the temperature divides the logits and must be positive.
    "temperature": Range(above=0),
    "top_k": Range(minimum=0),
    "top_p": Range(above=0, maximum=1),
    "inference_tp_size": Range(minimum=1),
    "kl_coef": Range(minimum=0),
    "kl_target": Range(above=0, optional=True),
    "kl_horizon": Range(minimum=1),
    "reward_clip": Range(above=0, optional=True),
    "missing_eos_penalty": Range(optional=True),
    "gamma": Range(minimum=0, maximum=1),
    "lam": Range(minimum=0, maximum=1),
    "cliprange": Range(above=0),
    "cliprange_value": Range(above=0),
    "vf_coef": Range(minimum=0),
    "entropy_coef": Range(minimum=0),
    "ptx_coef": Range(minimum=0),
    # The importance ratio of the first micro-batch is exactly 1, so a threshold at or below 1 skips every update.
    "ratio_threshold": Range(above=1),
    "approx_kl_threshold": Range(above=0, optional=True),
    "max_tokens_per_micro_batch": Range(minimum=1, optional=True),
    "max_consecutive_skips": Range(minimum=1),
    "num_samples_to_log": Range(minimum=0),
    "eval_prompts_limit": Range(minimum=1),
}

# Numeric GenerationConfig fields often passed through generation_kwargs, which GenerationConfig.validate accepts
# out of range. PPO samples exactly one answer per prompt from the policy, so beams and several returns are refused.
GENERATION_KWARG_RANGES = {
    "num_beams": Range(minimum=1, maximum=1),
    "num_return_sequences": Range(minimum=1, maximum=1),
    "repetition_penalty": Range(above=0),
    "no_repeat_ngram_size": Range(minimum=0),
    "typical_p": Range(above=0, maximum=1),
    "min_p": Range(minimum=0, maximum=1),
    "epsilon_cutoff": Range(minimum=0, below=1),
    "eta_cutoff": Range(minimum=0, below=1),
}
