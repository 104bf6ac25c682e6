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
    """Yield the actor ready for ``generate``. Under ZeRO-3 its shards are gathered once for the whole rollout
    (not once per token) and DeepSpeed's per-module fetch hooks are lifted meanwhile."""
    policy = actor_of(model, accelerator)
    plugin = accelerator.state.deepspeed_plugin if accelerator is not None else None
    if plugin is None or plugin.zero_stage != 3:
        yield policy
        return
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with deepspeed.zero.GatheredParameters(list(policy.parameters())):
        remove_hooks(model)
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
