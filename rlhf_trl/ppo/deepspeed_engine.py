"""What DeepSpeed's engines need to generate for the actor: the actor inside what Accelerate prepared, a process
group, the actor's precision, and generation settings translated to DeepSpeed's rollout engine (with the cases that
engine cannot reproduce). Used by :mod:`rlhf_trl.ppo.rollout_deepspeed`.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager

import torch
from torch import nn
from transformers import GenerationConfig


def find_actor(model: nn.Module) -> nn.Module:
    """Return the generating model inside what ``accelerator.prepare`` returned: the actor itself, or a DeepSpeed
    engine or DDP wrapper around it or around the trainer's ``PolicyAndValueWrapper`` (whose ``policy`` is the actor).
    """
    from deepspeed import DeepSpeedEngine

    from rlhf_trl.ppo.modeling import PolicyAndValueWrapper

    module = model.module if isinstance(model, (DeepSpeedEngine, nn.parallel.DistributedDataParallel)) else model
    return module.policy if isinstance(module, PolicyAndValueWrapper) else module


def resolve_generation_config(requested: GenerationConfig, model_defaults: GenerationConfig) -> GenerationConfig:
    """The settings HF ``generate`` would actually use: ours, then the model's own for unset fields, then
    Transformers' global defaults (e.g. top_k 50), applied in the same order as ``generate`` does."""
    resolved = copy.deepcopy(requested)
    resolved.update(**model_defaults.to_dict(), defaults_only=True)
    # Total-length limits stay unset: generate derives them from the new-token counts, and warns when both are set.
    global_defaults = GenerationConfig._get_default_generation_params()
    global_defaults.pop("max_length"), global_defaults.pop("min_length")
    resolved.update(**global_defaults, defaults_only=True)
    return resolved


def rollout_engine_limitation(generation_config: GenerationConfig) -> str | None:
    """Why DeepSpeed's ``HybridEngineRollout`` cannot reproduce ``generation_config`` exactly, or None if it can.

    That engine always decodes ``max_new_tokens`` tokens with end-of-sequence detection turned off (so ZeRO-3 ranks
    stay in step) and only takes temperature, top-k and top-p; settings that need end-of-sequence awareness during
    decoding or another search strategy go through the hybrid engine's ``generate`` instead. Expects a config
    from ``resolve_generation_config`` (defaults filled in).
    """
    if generation_config.max_new_tokens is None:
        return "max_new_tokens is not set"
    if generation_config.num_beams != 1:
        return "beam search"
    if generation_config.min_new_tokens or generation_config.min_length:
        return "a minimum answer length suppresses end-of-sequence, which that engine does not track"
    if generation_config.stop_strings:
        return "stop strings end answers early"
    if generation_config.do_sample and not generation_config.temperature:
        return "sampling at temperature 0"
    return None


def sampling_config_from(generation_config: GenerationConfig):
    """Translate resolved sampling settings into DeepSpeed's ``SamplingConfig`` (temperature 0 means greedy there,
    top-k 0 means no top-k filtering in both)."""
    from deepspeed.runtime.rollout import SamplingConfig

    if not generation_config.do_sample:
        return SamplingConfig(
            max_new_tokens=generation_config.max_new_tokens,
            temperature=0.0,
            n_samples_per_prompt=generation_config.num_return_sequences,
        )
    return SamplingConfig(
        max_new_tokens=generation_config.max_new_tokens,
        temperature=generation_config.temperature,
        top_k=generation_config.top_k,
        top_p=generation_config.top_p,
        n_samples_per_prompt=generation_config.num_return_sequences,
    )


@contextmanager
def distributed_environment():
    """``deepspeed.initialize`` needs a process group and a LOCAL_RANK variable. Launchers (torchrun, accelerate,
    deepspeed) provide both; in a plain process, start a one-process group over an in-memory store (no port) and
    describe that world in the environment only while DeepSpeed reads it."""
    if not torch.distributed.is_initialized() and "WORLD_SIZE" not in os.environ:
        torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    single_process = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    missing = [name for name in single_process if name not in os.environ]
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() == 1:
        os.environ.update({name: single_process[name] for name in missing})
    try:
        yield
    finally:
        for name in missing:
            os.environ.pop(name, None)


def precision_section(actor: nn.Module) -> dict:
    """Match the engine's precision to the actor's: DeepSpeed casts the module in place, and these parameters are
    shared with the training engine."""
    dtype = next(actor.parameters()).dtype
    return {"bf16": {"enabled": dtype == torch.bfloat16}, "fp16": {"enabled": dtype == torch.float16}}
