"""Rollout backends: how the actor generates answers inside PPO.

Every backend has ``generate(prompt_ids, prompt_mask) -> completion_ids`` and ``sync_weights()``. The trainer only
talks to this interface, so a faster engine can be plugged in without touching the PPO maths.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext

import torch
from transformers import GenerationConfig

logger = logging.getLogger(__name__)


def actor_of(model, accelerator=None):
    """The actor PreTrainedModel inside what Accelerate prepared: the trainer prepares a PolicyAndValueWrapper
    (attribute ``policy``); a bare causal LM is accepted too."""
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    return unwrapped.policy if isinstance(unwrapped, _policy_and_value_wrapper()) else unwrapped


def _policy_and_value_wrapper():
    from rlhf_trl.ppo.modeling import PolicyAndValueWrapper

    return PolicyAndValueWrapper


@contextmanager
def gathered_policy(model, accelerator=None):
    """Yield the actor with its full weights, ready for ``generate`` or a forward pass outside training. Under
    ZeRO-3 its shards are gathered once for the whole block (not once per token or layer) and, when ``model`` is a
    DeepSpeed engine, the engine's per-module fetch/release hooks are lifted meanwhile (they would fetch and release
    every layer at every forward). A model partitioned by ``zero.Init`` at load time, before any engine exists, has
    no hooks and cannot run a forward at all until gathered. Collective under ZeRO-3: every process must enter it."""
    policy = actor_of(model, accelerator)
    parameters = list(policy.parameters())
    if not any(hasattr(parameter, "ds_id") for parameter in parameters):  # not partitioned by ZeRO-3
        yield policy
        return
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with deepspeed.zero.GatheredParameters(parameters):
        remove_hooks(model)  # a no-op for a bare module (no engine, so no hooks)
        try:
            yield policy
        finally:
            add_hooks(model)


class RolloutBackend(ABC):
    """Generates completions for left-padded prompts with the current actor weights."""

    name: str = "base"

    def __init__(self, model, tokenizer, generation_config: GenerationConfig, accelerator=None):
        """``model`` is the actor as prepared by Accelerate (possibly wrapped by DeepSpeed or DDP)."""
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.accelerator = accelerator
        self.active_backend = self.name  # what actually generates (a backend may fall back), logged by the trainer

    @abstractmethod
    def generate(self, prompt_ids: torch.LongTensor, prompt_mask: torch.LongTensor) -> torch.LongTensor:
        """prompt_ids, prompt_mask: [batch, prompt_len], left-padded. Returns the new tokens only:
        [batch, completion_len], padded on the right with the pad token after each sequence ends."""

    def sync_weights(self) -> None:  # noqa: B027 - a no-op is right for backends that generate with the actor itself
        """Make the generation engine use the actor's latest weights (called after every PPO update)."""


class HFRollout(RolloutBackend):
    """Hugging Face ``generate`` with a KV cache. Under ZeRO-3 the sharded weights are gathered once per rollout
    (not once per token) through TRL's ``unwrap_model_for_generation``."""

    name = "hf"

    @torch.no_grad()
    def generate(self, prompt_ids, prompt_mask):
        with gathered_policy(self.model, self.accelerator) as model:
            was_training = model.training
            model.eval()
            # The prepared model's forward is autocast under mixed precision, the inner generate is not.
            precision = self.accelerator.autocast() if self.accelerator is not None else nullcontext()
            with precision:
                output = model.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    generation_config=self.generation_config,
                    tokenizer=self.tokenizer,  # needed for stop_strings
                )
            model.train(was_training)
        return output[:, prompt_ids.shape[1] :]
