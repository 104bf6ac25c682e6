"""The no-gradient forwards that score a rollout: the actor's and the reference's log-probs of the completion tokens
and the critic's values, over padded micro-batches or packed without padding (packing.score_packed)."""

from __future__ import annotations

import torch

from rlhf_trl.ppo import packing
from rlhf_trl.ppo.experience import Rollout, micro_batches
from rlhf_trl.ppo.modeling import completion_logprobs, completion_values, position_ids_from_mask


@torch.no_grad()
def score_forwards(model, reference_logits, rollout: Rollout, args, policy_dtype: torch.dtype):
    """Returns (logprobs [B, C] or None, ref_logprobs [B, C], values [B, C] or None: no critic).

    model: the prepared policy-and-value model, in eval mode; reference_logits(input_ids, attention_mask,
    position_ids): the reference's logits; args: the PPOConfig (temperature, micro_batch_size,
    max_tokens_per_micro_batch). The actor's log-probs are None when the rollout already holds them (generation
    gave them: recompute_rollout_logprobs off), so the actor's language-model head is skipped.
    """
    # Speed hook: padding-free scoring (packing.py) replaces the padded micro-batches below.
    if args.max_tokens_per_micro_batch is not None:
        return packing.score_packed(
            model, reference_logits, rollout, args.temperature, args.max_tokens_per_micro_batch, policy_dtype
        )
    input_ids, attention_mask = rollout.input_ids(), rollout.attention_mask()
    position_ids = position_ids_from_mask(attention_mask)
    prompt_length = rollout.prompt_ids.shape[1]
    logprobs, ref_logprobs, values = [], [], []
    for part in micro_batches(len(rollout), args.micro_batch_size):
        ids, mask, positions = input_ids[part], attention_mask[part], position_ids[part]
        completion = rollout.completion_ids[part]
        # Speed hook: no actor forward when generation gave the log-probs (recompute_rollout_logprobs off).
        keep = completion.shape[1] + 1  # the head runs on the answer's positions only
        logits, value = model(ids, mask, positions, with_logits=rollout.logprobs is None, logits_to_keep=keep)
        if logits is not None:
            logprobs.append(completion_logprobs(logits, completion, args.temperature))
        if value is not None:
            values.append(completion_values(value, prompt_length))
        ref_logits = reference_logits(ids, mask, positions, keep)
        ref_logprobs.append(completion_logprobs(ref_logits, completion, args.temperature))
        del logits, ref_logits
    return torch.cat(logprobs) if logprobs else None, torch.cat(ref_logprobs), torch.cat(values) if values else None
