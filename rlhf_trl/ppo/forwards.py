"""The no-gradient forwards that score a rollout: the actor's and the reference's log-probs of the completion tokens
and the critic's values, over padded micro-batches (each cut to its own width) or packed without padding
(packing.score_packed)."""

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
    width = rollout.completion_ids.shape[1]
    logprobs, ref_logprobs, values = [], [], []
    for part in micro_batches(len(rollout), args.micro_batch_size):
        # Each micro-batch runs on its own width (Rollout.select); its outputs are padded back to the rollout's.
        rows = rollout.select(torch.arange(part.start, part.stop))
        mask = rows.attention_mask()
        ids, positions, completion = rows.input_ids(), position_ids_from_mask(mask), rows.completion_ids
        # Speed hook: no actor forward when generation gave the log-probs (recompute_rollout_logprobs off).
        keep = completion.shape[1] + 1  # the head runs on the answer's positions only
        logits, value = model(ids, mask, positions, with_logits=rollout.logprobs is None, logits_to_keep=keep)
        if logits is not None:
            logprobs.append(pad_columns(completion_logprobs(logits, completion, args.temperature), width))
        if value is not None:
            values.append(pad_columns(completion_values(value, rows.prompt_ids.shape[1]), width))
        ref_logits = reference_logits(ids, mask, positions, keep)
        ref_logprobs.append(pad_columns(completion_logprobs(ref_logits, completion, args.temperature), width))
        del logits, ref_logits
    return torch.cat(logprobs) if logprobs else None, torch.cat(ref_logprobs), torch.cat(values) if values else None


def pad_columns(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """[M, C'] -> [M, width] with zeros on the right (past every answer's end)."""
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))
