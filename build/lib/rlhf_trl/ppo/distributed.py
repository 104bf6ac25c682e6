"""Placing PPO's models under Accelerate/DeepSpeed: the DeepSpeed batch fields our own loop must fill, and the
frozen models (reference, reward) that get no optimizer. Mixed into PPOTrainer."""

from __future__ import annotations


class DistributedSetupMixin:
    def _configure_deepspeed(self, model) -> None:
        """Fill the DeepSpeed config's batch fields: our loop feeds micro-batches itself, so no dataloader tells
        Accelerate what 'auto' means."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None:
            return
        config = plugin.deepspeed_config
        config["train_micro_batch_size_per_gpu"] = self.args.micro_batch_size
        config["gradient_accumulation_steps"] = self.args.gradient_accumulation_steps
        config["train_batch_size"] = (
            self.args.micro_batch_size * self.args.gradient_accumulation_steps * self.accelerator.num_processes
        )
        if config.get("gradient_clipping") == "auto":
            config["gradient_clipping"] = self.args.max_grad_norm
        hidden = getattr(model.config, "hidden_size", None)
        zero = config.get("zero_optimization", {})
        for key, value in {
            "reduce_bucket_size": hidden * hidden if hidden else 5e8,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden) if hidden else 5e8,
            "stage3_param_persistence_threshold": 10 * hidden if hidden else 1e6,
        }.items():
            if zero.get(key) == "auto":
                zero[key] = value
        for precision, enabled in (("bf16", self.args.bf16), ("fp16", self.args.fp16)):
            if config.get(precision, {}).get("enabled") == "auto":
                config[precision]["enabled"] = bool(enabled)

    def _prepare_frozen(self, model):
        """Reference and reward models: no optimizer; sharded with ZeRO-3 under DeepSpeed, else moved to device."""
        if model is None:
            return None
        model.requires_grad_(False).eval()
        if self.accelerator.state.deepspeed_plugin is not None:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(model, self.accelerator)
        return model.to(self.accelerator.device)
