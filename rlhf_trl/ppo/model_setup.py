"""Getting PPO's pieces ready before the loop: the Accelerator, the models (LoRA adapters, the frozen reference,
dropout off, gradient checkpointing, the EMA copy) and the generator (the generation backend)."""

from __future__ import annotations

import copy
import logging
import os

from accelerate import Accelerator
from accelerate.utils import set_seed

from rlhf_trl.ppo.modeling import disable_dropout
from rlhf_trl.ppo.run_logger import build_trackers

logger = logging.getLogger("rlhf_trl.ppo.trainer")


def check_tokenizer_and_critic(tokenizer, value_model, args) -> None:
    """The actor's tokenizer needs a pad token distinct from EOS; a critic is given exactly when the advantage
    estimator uses one, and then it needs the actor's vocabulary."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("the actor tokenizer needs a pad token distinct from EOS (see rlhf_trl.models)")
    if args.uses_critic and value_model is None:
        raise ValueError(f"advantage_estimator {args.advantage_estimator} needs a critic: pass value_model")
    if not args.uses_critic and value_model is not None:
        raise ValueError(
            f"advantage_estimator {args.advantage_estimator} uses no critic: pass value_model=None, so none is "
            "held, trained or saved"
        )
    if value_model is None:
        return
    critic_rows = value_model.get_input_embeddings().num_embeddings
    if critic_rows < len(tokenizer):
        raise ValueError(
            f"the critic has {critic_rows} token embeddings, the actor's tokenizer {len(tokenizer)} tokens: "
            "the critic reads the actor's token ids, so it needs the actor's vocabulary"
        )


def build_accelerator(args) -> Accelerator:
    """The run's Accelerator (precision, gradient accumulation, trackers), then the seed set for every RNG."""
    # Accelerate turns DeepSpeed off when cpu=True; under a DeepSpeed launch DeepSpeed picks the device itself
    # (its CPU accelerator on machines without a GPU), so use_cpu only applies to non-DeepSpeed runs.
    deepspeed_launch = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision="bf16" if args.bf16 else ("fp16" if args.fp16 else "no"),
        cpu=args.use_cpu and not deepspeed_launch,
        log_with=build_trackers(args),
    )
    set_seed(args.seed)
    plugin = accelerator.state.deepspeed_plugin
    logger.info(
        "accelerate: %s on %s, %d process(es)%s",
        accelerator.distributed_type,
        accelerator.device,
        accelerator.num_processes,
        f", DeepSpeed ZeRO-{plugin.zero_stage}" if plugin is not None else "",
    )
    return accelerator


def add_adapters(args, model, value_model, peft_config):
    """LoRA on the actor, and (critic_lora) on the critic with its score head fully trained. Quantized (8/4-bit)
    bases are first prepared for training (norms in fp32, input gradients for checkpointing)."""
    from dataclasses import replace as replace_fields

    from peft import get_peft_model, prepare_model_for_kbit_training

    def prepare(module):
        if getattr(module.config, "quantization_config", None) is not None:  # loaded in 8/4-bit
            return prepare_model_for_kbit_training(module, args.gradient_checkpointing)
        return module

    model = get_peft_model(prepare(model), peft_config)
    if args.critic_lora and value_model is not None:
        critic_config = replace_fields(peft_config, task_type="SEQ_CLS", modules_to_save=["score"])
        value_model = get_peft_model(prepare(value_model), critic_config)
    return model, value_model


def ready_models(args, model, value_model, ref_model, reward_model, peft_config):
    """Returns (actor, critic, reference or None, EMA copy or None) ready for Accelerate.

    With LoRA the reference is the actor with its adapters disabled (None here); otherwise ``ref_model`` or a
    frozen copy of the actor."""
    if peft_config is not None:
        model, value_model = add_adapters(args, model, value_model, peft_config)
        ref_model = None
    else:
        # DeepSpeed tags the parameters it partitioned (ZeRO-3 loading) with ds_id; those cannot be copied.
        if ref_model is None and any(hasattr(parameter, "ds_id") for parameter in model.parameters()):
            raise ValueError(
                "the actor's weights were partitioned by ZeRO-3 at load time and cannot be copied into a "
                "reference: pass ref_model loaded with from_pretrained"
            )
        ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
    if args.disable_dropout:
        for module in (model, value_model, ref_model, reward_model):
            if module is not None:
                disable_dropout(module)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    ema = copy.deepcopy(model).requires_grad_(False).eval() if args.ema_beta is not None else None
    return model, value_model, ref_model, ema


def build_generator(args, model, tokenizer, generation_config, accelerator):
    """The generation backend ``args.rollout_backend`` names, over the prepared ``model``."""
    from rlhf_trl.ppo.rollout import build_rollout

    options = {}
    if args.rollout_backend == "deepspeed":
        options = {
            "inference_tp_size": args.inference_tp_size,
            "release_inference_cache": args.release_inference_cache,
            "pin_parameters": args.pin_parameters,
            "cuda_graph": args.cuda_graph,
            "max_prompt_length": args.max_prompt_length,
        }
    return build_rollout(args.rollout_backend, model, tokenizer, generation_config, accelerator=accelerator, **options)
