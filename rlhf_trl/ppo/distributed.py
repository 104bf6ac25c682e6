"""Placing PPO's models under Accelerate/DeepSpeed: the DeepSpeed batch fields our own loop must fill, and the
frozen models (reference, reward) that get no optimizer."""

from __future__ import annotations


def configure_deepspeed(accelerator, args, model) -> None:
    """Fill the DeepSpeed config's batch fields from the PPOConfig ``args``: our loop feeds micro-batches itself, so
    no dataloader tells Accelerate what 'auto' means. ``model`` (the actor) gives the hidden size for bucket sizes.
    Nothing to do without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = args.micro_batch_size
    config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    config["train_batch_size"] = args.micro_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    if config.get("gradient_clipping") == "auto":
        config["gradient_clipping"] = args.max_grad_norm
    hidden = getattr(model.config, "hidden_size", None)
    zero = config.get("zero_optimization", {})
    for key, value in {
        "reduce_bucket_size": hidden * hidden if hidden else 5e8,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden) if hidden else 5e8,
        "stage3_param_persistence_threshold": 10 * hidden if hidden else 1e6,
    }.items():
        if zero.get(key) == "auto":
            zero[key] = value
    for precision, enabled in (("bf16", args.bf16), ("fp16", args.fp16)):
        if config.get(precision, {}).get("enabled") == "auto":
            config[precision]["enabled"] = bool(enabled)


def prepare_frozen(model, accelerator):
    """Reference and reward models: no optimizer; sharded with ZeRO-3 under DeepSpeed, else moved to the device."""
    if model is None:
        return None
    model.requires_grad_(False).eval()
    if accelerator.state.deepspeed_plugin is not None:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(model, accelerator)
    return model.to(accelerator.device)
