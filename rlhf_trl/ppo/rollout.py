"""Rollout backends: how the actor generates answers inside PPO.

Every backend has ``generate(prompt_ids, prompt_mask) -> completion_ids`` and ``sync_weights()``. The trainer only
talks to this interface, so a faster engine can be plugged in without touching the PPO maths.
``generate_with_logprobs`` also returns the actor's per-token log-probs of the sampled answer where the backend can
read them from the logits it decoded with (the ``hf`` backend), which saves the actor's scoring forward.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext

import torch
from transformers import GenerationConfig

from rlhf_trl.ppo.losses import logprobs_from_logits

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

    def generate_with_logprobs(
        self, prompt_ids: torch.LongTensor, prompt_mask: torch.LongTensor, temperature: float
    ) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """Like ``generate``, plus log-probs [batch, completion_len] of the sampled tokens at ``temperature`` from
        the decoding logits, or None where the backend cannot give them (then the trainer runs a forward)."""
        return self.generate(prompt_ids, prompt_mask), None

    def sync_weights(self) -> None:  # noqa: B027 - a no-op is right for backends that generate with the actor itself
        """Make the generation engine use the actor's latest weights (called after every PPO update)."""


class HFRollout(RolloutBackend):
    """Hugging Face ``generate`` with a KV cache. Under ZeRO-3 the sharded weights are gathered once per rollout
    (not once per token) through TRL's ``unwrap_model_for_generation``."""

    name = "hf"

    @torch.no_grad()
    def generate(self, prompt_ids, prompt_mask):
        return self._generate(prompt_ids, prompt_mask, None)[0]

    @torch.no_grad()
    def generate_with_logprobs(self, prompt_ids, prompt_mask, temperature):
        return self._generate(prompt_ids, prompt_mask, temperature)

    def _generate(self, prompt_ids, prompt_mask, temperature: float | None):
        """-> (completion ids, log-probs or None). ``temperature`` None: no log-probs asked for."""
        # Raw logits (``output_logits``), not ``scores``: scores went through the logits processors (top-k/top-p
        # set filtered tokens to -inf, temperature is already applied), while PPO's log-probs are
        # log softmax(raw logits / temperature), as losses.logprobs_from_logits computes them from a forward.
        config = self.generation_config
        if temperature is not None:
            config = copy.deepcopy(config)
            config.output_logits, config.return_dict_in_generate = True, True
        with gathered_policy(self.model, self.accelerator) as model:
            was_training = model.training
            model.eval()
            # The prepared model's forward is autocast under mixed precision, the inner generate is not.
            precision = self.accelerator.autocast() if self.accelerator is not None else nullcontext()
            with precision:
                output = model.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    generation_config=config,
                    tokenizer=self.tokenizer,  # needed for stop_strings
                )
            model.train(was_training)
        if temperature is None:
            return output[:, prompt_ids.shape[1] :], None
        completion_ids = output.sequences[:, prompt_ids.shape[1] :]
        if completion_ids.shape[1] == 0:
            return completion_ids, None
        # One [batch, vocab] logits tensor per generated token: taken step by step, so no [batch, length, vocab]
        # copy is made (the price of skipping the forward is holding these logits until generation ends).
        logprobs = [
            logprobs_from_logits(step_logits[:, None], completion_ids[:, step : step + 1], temperature)
            for step, step_logits in enumerate(output.logits)
        ]
        return completion_ids, torch.cat(logprobs, dim=1)


def build_rollout(
    name: str, model, tokenizer, generation_config: GenerationConfig, accelerator=None, **options
) -> RolloutBackend:
    """Build the rollout backend called ``name`` (one of ``ppo.config.ROLLOUT_BACKENDS``); ``options`` go to the
    DeepSpeed backend. A new backend subclasses RolloutBackend and gets its entry here and in ROLLOUT_BACKENDS."""
    from rlhf_trl.ppo.rollout_deepspeed import DeepSpeedRollout  # imports deepspeed: only when asked for

    backends = {HFRollout.name: HFRollout, DeepSpeedRollout.name: DeepSpeedRollout}
    if name not in backends:
        raise ValueError(f"Unknown rollout backend {name!r}; choose one of: {', '.join(sorted(backends))}.")
    if name == HFRollout.name:
        if options:
            raise ValueError(f"The 'hf' rollout backend takes no options; got {', '.join(sorted(options))}.")
        return HFRollout(model, tokenizer, generation_config, accelerator)
    return DeepSpeedRollout(model, tokenizer, generation_config, accelerator, **options)
