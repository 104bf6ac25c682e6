"""PPO's losses as pure functions on tensors: token log-probabilities and entropy from logits, the clipped policy
and value losses, the KL penalty as a loss, and the reduction of a per-token loss to a scalar.

Shapes: B = batch, T = completion length (right-padded), V = vocabulary. ``mask`` is [B, T] as in ``masks``: every
function that takes one gives results (and gradients) that do not depend on the values at padded positions.

The defaults of DeepSpeed-Chat's step 3 are: policy and value clip 0.2, value loss 0.5 * max(clipped, unclipped).
"""

from __future__ import annotations

import torch

from rlhf_trl.ppo.advantages import kl_estimate
from rlhf_trl.ppo.masks import check_same_shape, fill_padding, masked_mean


def _check_clip_range(clip_range: float) -> None:
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}.")


# Log-probabilities and entropy


# Largest float32 copy of the logits made at once (elements; 2**22 = 16 MiB): a tiny model's whole batch fits, while
# a large vocabulary gets one row ([T, V]) at a time, so the copy never grows beyond one row or this budget. Larger
# chunks were slower on CPU (2**24 with a 50k vocabulary: 64 MiB temporaries, update 1.67 s vs 0.98 s per step).
CHUNK_ELEMENTS = 2**22


def _row_chunks(logits: torch.Tensor, temperature: float):
    """Yield float32 (or wider), temperature-scaled slices [rows, T, V] of logits [B, T, V], as many rows at once
    as fit in CHUNK_ELEMENTS (at least one). Looping over single rows costs a tiny model more than the maths."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    rows = max(1, CHUNK_ELEMENTS // max(1, logits.shape[1] * logits.shape[2]))
    # split, not slicing: the backward of a split joins the chunks' gradients into one tensor, while each slice's
    # backward would fill a zero tensor of the whole batch's size (quadratic in the number of chunks).
    for chunk in logits.split(rows):
        chunk = chunk.to(compute_dtype)  # [rows, T, V]
        yield chunk / temperature if temperature != 1.0 else chunk


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits: [B, T, V], tokens: [B, T]. Returns [B, T]: log softmax(logits / temperature) at each token.

    The logits are divided by the sampling temperature so that the log-probs are those of the distribution the
    tokens were sampled from. Computed in at least float32 (bf16 log-softmax loses about three digits), in chunks of
    rows so that the float32 copy stays within one row or CHUNK_ELEMENTS.
    """
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"Expected logits [B, T, V] and tokens [B, T], got {tuple(logits.shape)} and {tuple(tokens.shape)}."
        )
    chunk_logprobs, start = [], 0
    for scaled_logits in _row_chunks(logits, temperature):  # [rows, T, V]
        chunk_tokens = tokens[start : start + scaled_logits.shape[0]]  # [rows, T]
        start += scaled_logits.shape[0]
        token_logits = scaled_logits.gather(dim=-1, index=chunk_tokens.unsqueeze(-1)).squeeze(-1)  # [rows, T]
        chunk_logprobs.append(token_logits - torch.logsumexp(scaled_logits, dim=-1))  # [rows, T]
    return torch.cat(chunk_logprobs) if len(chunk_logprobs) > 1 else chunk_logprobs[0]  # [B, T]


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits: [B, T, V]. Returns [B, T]: entropy -sum_v p_v log p_v of softmax(logits / temperature), in nats.

    Same precision and memory choices as ``logprobs_from_logits``.
    """
    if logits.dim() != 3:
        raise ValueError(f"Expected logits [B, T, V], got {tuple(logits.shape)}.")
    chunk_entropies = []
    for scaled_logits in _row_chunks(logits, temperature):  # [rows, T, V]
        log_probs = torch.log_softmax(scaled_logits, dim=-1)  # [rows, T, V]
        chunk_entropies.append(-(log_probs.exp() * log_probs).sum(dim=-1))  # [rows, T]
    return torch.cat(chunk_entropies) if len(chunk_entropies) > 1 else chunk_entropies[0]  # [B, T]


# Losses


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    loss_type: str = "token_mean",
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, as a loss to minimise, averaged over all real tokens of the batch (loss_type
    token_mean), or reduced as ``aggregate_loss`` does for the other loss types (max_completion_length: dr_grpo).

    logprobs: [B, T] under the current policy (with gradient); old_logprobs: [B, T] at rollout time; advantages:
    [B, T]; mask: [B, T]. Per token: max(-A * ratio, -A * clip(ratio, 1 - clip_range, 1 + clip_range)) with
    ratio = exp(logprobs - old_logprobs). Once the ratio has left the clip range in the direction the advantage
    pushes it, the clipped (constant) term is the larger one and the token gives no gradient.

    Returns (loss scalar, stats) with detached scalar stats: "clip_fraction" (share of real tokens where the clipped
    term was strictly larger), "approx_kl" (mean of 0.5 * (logprobs - old_logprobs) ** 2), "ratio_mean", "ratio_max".
    """
    _check_clip_range(clip_range)
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    # Filled before the exp: a huge log-ratio at a padded position would otherwise give inf there, and inf * 0 = NaN
    # in the gradient even though the position is masked out of the mean.
    log_ratio = fill_padding(logprobs - old_logprobs, mask)  # [B, T]
    advantages = fill_padding(advantages, mask)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped_loss = -advantages * ratio  # [B, T]
    clipped_loss = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)  # [B, T]
    per_token_loss = torch.maximum(unclipped_loss, clipped_loss)  # [B, T]
    if loss_type == "token_mean":
        loss = masked_mean(per_token_loss, mask)  # scalar
    else:
        loss = aggregate_loss(per_token_loss, mask, loss_type, max_completion_length)  # scalar
    with torch.no_grad():
        real = mask.bool()
        stats = {
            "clip_fraction": masked_mean((clipped_loss > unclipped_loss).to(ratio.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": ratio.masked_fill(~real, float("-inf")).max(),
        }
    return loss, {name: value.detach() for name, value in stats.items()}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DeepSpeed-Chat's clipped value loss: 0.5 * masked mean of max((v - R)^2, (clip(v, old - c, old + c) - R)^2).

    values: [B, T] current critic values (with gradient); old_values: [B, T] at rollout time; returns: [B, T] GAE
    returns; mask: [B, T]. Returns (loss scalar, {"clip_fraction": share of real tokens where the clipped error was
    strictly larger}).
    """
    _check_clip_range(clip_range)
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    values, old_values, returns = (fill_padding(tensor, mask) for tensor in (values, old_values, returns))
    clipped_values = torch.clamp(values, old_values - clip_range, old_values + clip_range)  # [B, T]
    unclipped_error = (values - returns) ** 2  # [B, T]
    clipped_error = (clipped_values - returns) ** 2  # [B, T]
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)  # scalar
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)
    return loss, {"clip_fraction": clip_fraction.detach()}


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    estimator: str,
    old_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable KL penalty for putting the KL in the loss instead of in the reward: masked mean of
    ``kl_estimate`` over real tokens. logprobs (with gradient), ref_logprobs, mask: [B, T]. Returns a scalar.
    ``old_logprobs`` [B, T] (the rollout's): each token's estimate is weighted by its importance ratio
    exp(logprobs - old_logprobs), differentiated (the bias correction of DeepSeek-V3.2, TRL's
    ``use_bias_correction_kl``). The ratio is 1 on the first pass, but its gradient is not: the expected gradient of
    the weighted k3 becomes that of KL(policy || reference), the reverse KL the reward penalty targets.

    With tokens sampled from the current policy, the expected gradient of each estimator is:
      k1: zero (E_policy[grad log policy] = 0): it only adds noise, do not use it as a loss.
      k2: the gradient of KL(policy || reference), the reverse KL that the reward penalty targets.
      k3: the gradient of KL(reference || policy), the forward KL. Its value estimates the reverse KL without bias
          and with low variance, and near the reference both KLs have the same gradient to first order, so it is the
          usual choice (as in GRPO); far from the reference it pulls towards covering the reference's support.
    """
    check_same_shape(logprobs=logprobs, mask=mask)
    # Padded positions filled before the estimator's exp, so they add neither NaN nor gradient.
    logprobs, ref_logprobs = fill_padding(logprobs, mask), fill_padding(ref_logprobs, mask)
    per_token = kl_estimate(logprobs, ref_logprobs, estimator)  # [B, T]
    if old_logprobs is not None:
        check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs)
        per_token = per_token * torch.exp(logprobs - fill_padding(old_logprobs, mask))  # [B, T]
    return masked_mean(per_token, mask)


# Loss aggregation

LOSS_TYPES = ("token_mean", "sequence_mean", "dr_grpo")
# TRL 1.16 GRPOConfig.loss_type names of the same aggregations (see aggregate_loss for the small differences).
TRL_LOSS_TYPES = {"token_mean": ("bnpo", "dapo"), "sequence_mean": ("grpo",), "dr_grpo": ("dr_grpo",)}


def aggregate_loss(
    per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_completion_length: int | None = None
) -> torch.Tensor:
    """Reduce a per-token loss [B, T] over the real tokens of ``mask`` [B, T] to a scalar.

      token_mean      sum over all real tokens / number of real tokens of the batch. TRL "bnpo" (this batch's
                      tokens) and "dapo" (TRL's default: the tokens of the whole generation batch across processes
                      and accumulation steps; the same when this batch is all of it). verl "token-mean". No length
                      bias: every token weighs the same.
      sequence_mean   mean over each sequence's real tokens, then mean over the B sequences. TRL "grpo", verl
                      "seq-mean-token-mean". Tokens of short completions weigh more (the length bias of GRPO).
      dr_grpo         sum over all real tokens / (B * max_completion_length), a constant. TRL "dr_grpo". verl's
                      "seq-mean-token-sum-norm" divides by the constant alone, not by B.

    A sequence without real tokens adds 0 to sequence_mean and still counts in B, as in TRL (verl leaves it out).
    max_completion_length is needed by dr_grpo and must be at least the longest real completion.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}.")
    check_same_shape(per_token_loss=per_token_loss, mask=mask)
    if per_token_loss.dim() != 2:
        raise ValueError(f"per_token_loss must be [B, T], got shape {tuple(per_token_loss.shape)}.")
    real = mask.bool()
    loss = fill_padding(per_token_loss, real)  # [B, T]
    token_counts = real.sum(dim=1).to(loss.dtype)  # [B]
    if loss_type == "token_mean":
        return loss.sum() / token_counts.sum().clamp(min=1)
    if loss_type == "sequence_mean":
        return (loss.sum(dim=1) / token_counts.clamp(min=1)).mean()
    if max_completion_length is None or max_completion_length < 1:
        raise ValueError(f"loss_type dr_grpo needs max_completion_length >= 1, got {max_completion_length}.")
    longest = int(token_counts.max().item()) if token_counts.numel() else 0
    if longest > max_completion_length:
        raise ValueError(
            f"loss_type dr_grpo: a completion has {longest} real tokens, more than max_completion_length = "
            f"{max_completion_length}; set max_completion_length to the generation limit (max_new_tokens)."
        )
    return loss.sum() / (per_token_loss.shape[0] * max_completion_length)
