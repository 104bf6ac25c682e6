"""PPO maths for language models as pure functions on tensors.

Shapes: B = batch, T = completion length (right-padded), V = vocabulary. ``mask`` is [B, T] (float, bool or long)
with 1 on real completion tokens (up to and including the first EOS) and 0 on padding; every function that takes a
mask gives results (and gradients) that do not depend on the values at padded positions, even inf or NaN there:
padded entries are selected away with ``torch.where`` (``fill_padding``), never multiplied by 0.

The defaults of DeepSpeed-Chat's step 3 are: k1 KL in the reward with coefficient 0.1, gamma = 1.0, lambda = 0.95,
policy and value clip 0.2, value loss 0.5 * max(clipped, unclipped), no advantage whitening, EMA beta 0.992.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def _check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise a ValueError naming the tensors if they do not all have the same shape."""
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"Shape mismatch: {described}; these tensors must have the same shape.")


def _check_clip_range(clip_range: float) -> None:
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}.")


def _check_estimator(estimator: str) -> None:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}.")


# Masks and masked statistics


def fill_padding(values: torch.Tensor, mask: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """``values`` with every padded entry (mask 0) replaced by ``value``.

    Masking by multiplication is not enough: an inf or NaN at a padded position gives inf * 0 = NaN, in the forward
    pass and in the gradient. ``torch.where`` selects instead of multiplying, and filling before any exp or square
    keeps padded entries harmless in the backward pass too.
    """
    return torch.where(mask.bool(), values, torch.as_tensor(value, dtype=values.dtype, device=values.device))


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over entries where ``mask`` is 1 (mask entries are 0 or 1, same shape as values).

    dim=None: a scalar over all real entries; otherwise the mean along ``dim``. A slice with no real entry gives 0
    rather than NaN.
    """
    _check_same_shape(values=values, mask=mask)
    kept = fill_padding(values, mask)
    mask = mask.to(values.dtype)
    masked_sum = kept.sum() if dim is None else kept.sum(dim=dim)
    real_count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum / real_count.clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Scalar variance of ``values`` over entries where ``mask`` is 1.

    unbiased=True divides by (n - 1) and needs at least two real entries; unbiased=False divides by n.
    """
    values = fill_padding(values, mask)
    mean = masked_mean(values, mask)  # scalar
    centered_squares = (values - mean) ** 2
    variance = masked_mean(centered_squares, mask)  # scalar, divided by n
    if unbiased:
        real_count = mask.to(values.dtype).sum()
        if real_count.item() < 2:
            raise ValueError(f"The unbiased variance needs at least 2 real entries, got {real_count.item():g}.")
        variance = variance * real_count / (real_count - 1)  # Bessel's correction
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``values`` to unit variance over the real entries: (x - mean) / sqrt(var + 1e-8).

    The variance is the population one (divided by n), so the real entries of the output have variance 1 (up to the
    1e-8) and a single real entry whitens to 0 instead of failing. shift_mean=False keeps the original mean (only the
    spread is normalised). Padded entries of the output are 0.
    """
    values = fill_padding(values, mask)
    mean = masked_mean(values, mask)  # scalar
    variance = masked_var(values, mask, unbiased=False)  # scalar
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return fill_padding(whitened, mask)


# Log-probabilities, entropy and KL


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits: [B, T, V], tokens: [B, T]. Returns [B, T]: log softmax(logits / temperature) at each token.

    The logits are divided by the sampling temperature so that the log-probs are those of the distribution the
    tokens were sampled from. Computed in at least float32 (bf16 log-softmax loses about three digits), one row at a
    time so that only one [T, V] float32 copy exists at once.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"Expected logits [B, T, V] and tokens [B, T], got {tuple(logits.shape)} and {tuple(tokens.shape)}."
        )
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    row_logprobs = []
    for row_logits, row_tokens in zip(logits, tokens, strict=True):
        scaled_logits = row_logits.to(compute_dtype) / temperature  # [T, V]
        token_logits = scaled_logits.gather(dim=-1, index=row_tokens.unsqueeze(-1)).squeeze(-1)  # [T]
        row_logprobs.append(token_logits - torch.logsumexp(scaled_logits, dim=-1))  # [T]
    return torch.stack(row_logprobs)  # [B, T]


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits: [B, T, V]. Returns [B, T]: entropy -sum_v p_v log p_v of softmax(logits / temperature), in nats.

    Same precision and memory choices as ``logprobs_from_logits``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if logits.dim() != 3:
        raise ValueError(f"Expected logits [B, T, V], got {tuple(logits.shape)}.")
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    row_entropies = []
    for row_logits in logits:
        log_probs = torch.log_softmax(row_logits.to(compute_dtype) / temperature, dim=-1)  # [T, V]
        row_entropies.append(-(log_probs.exp() * log_probs).sum(dim=-1))  # [T]
    return torch.stack(row_entropies)  # [B, T]


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the log-probs of tokens sampled from the policy.

    logprobs, ref_logprobs: [B, T]. Returns [B, T]. Schulman's estimators ("Approximating KL divergence", 2020),
    with log_ratio = logprobs - ref_logprobs:
      k1 = log_ratio                                   unbiased, high variance, can be negative
      k2 = 0.5 * log_ratio ** 2                        biased, low variance, >= 0
      k3 = exp(-log_ratio) - 1 + log_ratio             unbiased, low variance, >= 0
    """
    _check_estimator(estimator)
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = logprobs - ref_logprobs  # [B, T]
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    # k3: written with ref - lp, as in Schulman's note: r = ref / policy, k3 = (r - 1) - log r
    ref_minus_policy = -log_ratio
    return torch.exp(ref_minus_policy) - 1 - ref_minus_policy


# Rewards and advantages


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """DeepSpeed-Chat's per-token reward: -kl_coef * kl on every real token, plus the sequence score on the last
    real token of each row. 0 on padding.

    scores: [B] reward-model scores (clip them before, DS-Chat clips to +-5). kl: [B, T] per-token KL estimate.
    mask: [B, T]. Returns [B, T]. Every row needs at least one real token (the score must land somewhere).
    """
    if scores.dim() != 1 or scores.shape[0] != kl.shape[0]:
        raise ValueError(f"scores must be [B] with B = kl.shape[0], got {tuple(scores.shape)} and {tuple(kl.shape)}.")
    _check_same_shape(kl=kl, mask=mask)
    real = mask.bool()  # [B, T]
    if not real.any(dim=1).all():
        raise ValueError("Every row of mask needs at least one real token to receive its score.")
    rewards = -kl_coef * fill_padding(kl, real)  # [B, T]
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(real)  # [B, T]
    last_real_index = torch.where(real, positions, -1).max(dim=1).values  # [B]
    rows = torch.arange(mask.shape[0], device=mask.device)  # [B]
    rewards[rows, last_real_index] += scores.to(rewards.dtype)
    return rewards


def gae_advantages(
    values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over the completion tokens.

    values: [B, T] critic values, rewards: [B, T] per-token rewards, mask: [B, T] of the form 1...1 0...0 per row.
    Returns (advantages [B, T], returns [B, T]) with returns = advantages + values on real tokens; both are 0 on
    padding. The answer ends at its last real token, so the value bootstrapped after it is 0.

        delta_t     = r_t + gamma * V_{t+1} - V_t
        advantage_t = delta_t + gamma * lam * advantage_{t+1}

    Gradients flow into the inputs; the trainer calls this under ``torch.no_grad()``.
    """
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}.")
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1], got {lam}.")
    _check_same_shape(values=values, rewards=rewards, mask=mask)
    real = mask.to(values.dtype)  # [B, T]
    if (real[:, 1:] > real[:, :-1]).any():
        raise ValueError(
            "gae_advantages needs right-padded masks (1...1 0...0 per row); found a real token after padding."
        )
    # Zeroing padded values and rewards makes every padded step contribute delta = 0, and makes V_{t+1} = 0 after
    # the last real token: the bootstrap needs no special case.
    values = fill_padding(values, real)
    rewards = fill_padding(rewards, real)
    batch_size, length = values.shape
    advantages_reversed = []
    next_value = torch.zeros(batch_size, dtype=values.dtype, device=values.device)  # [B]
    next_advantage = torch.zeros(batch_size, dtype=values.dtype, device=values.device)  # [B]
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # [B]
        next_advantage = delta + gamma * lam * next_advantage  # [B]
        advantages_reversed.append(next_advantage)
        next_value = values[:, t]
    advantages = fill_padding(torch.stack(advantages_reversed[::-1], dim=1), real)  # [B, T]
    returns = fill_padding(advantages + values, real)  # [B, T]
    return advantages, returns


# Losses


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, as a loss to minimise, averaged over all real tokens of the batch.

    logprobs: [B, T] under the current policy (with gradient); old_logprobs: [B, T] at rollout time; advantages:
    [B, T]; mask: [B, T]. Per token: max(-A * ratio, -A * clip(ratio, 1 - clip_range, 1 + clip_range)) with
    ratio = exp(logprobs - old_logprobs). Once the ratio has left the clip range in the direction the advantage
    pushes it, the clipped (constant) term is the larger one and the token gives no gradient.

    Returns (loss scalar, stats) with detached scalar stats: "clip_fraction" (share of real tokens where the clipped
    term was strictly larger), "approx_kl" (mean of 0.5 * (logprobs - old_logprobs) ** 2), "ratio_mean", "ratio_max".
    """
    _check_clip_range(clip_range)
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    # Filled before the exp: a huge log-ratio at a padded position would otherwise give inf there, and inf * 0 = NaN
    # in the gradient even though the position is masked out of the mean.
    log_ratio = fill_padding(logprobs - old_logprobs, mask)  # [B, T]
    advantages = fill_padding(advantages, mask)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped_loss = -advantages * ratio  # [B, T]
    clipped_loss = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)  # [B, T]
    loss = masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)  # scalar
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
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    values, old_values, returns = (fill_padding(tensor, mask) for tensor in (values, old_values, returns))
    clipped_values = torch.clamp(values, old_values - clip_range, old_values + clip_range)  # [B, T]
    unclipped_error = (values - returns) ** 2  # [B, T]
    clipped_error = (clipped_values - returns) ** 2  # [B, T]
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)  # scalar
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)
    return loss, {"clip_fraction": clip_fraction.detach()}


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str) -> torch.Tensor:
    """Differentiable KL penalty for putting the KL in the loss instead of in the reward: masked mean of
    ``kl_estimate`` over real tokens. logprobs (with gradient), ref_logprobs, mask: [B, T]. Returns a scalar.

    With tokens sampled from the current policy, the expected gradient of each estimator is:
      k1: zero (E_policy[grad log policy] = 0): it only adds noise, do not use it as a loss.
      k2: the gradient of KL(policy || reference), the reverse KL that the reward penalty targets.
      k3: the gradient of KL(reference || policy), the forward KL. Its value estimates the reverse KL without bias
          and with low variance, and near the reference both KLs have the same gradient to first order, so it is the
          usual choice (as in GRPO); far from the reference it pulls towards covering the reference's support.
    """
    _check_same_shape(logprobs=logprobs, mask=mask)
    # Padded positions filled before the estimator's exp, so they add neither NaN nor gradient.
    logprobs, ref_logprobs = fill_padding(logprobs, mask), fill_padding(ref_logprobs, mask)
    return masked_mean(kl_estimate(logprobs, ref_logprobs, estimator), mask)


@torch.no_grad()
def ema_update(ema_parameters: Iterable[torch.Tensor], parameters: Iterable[torch.Tensor], beta: float) -> None:
    """In place, for each pair: ema = beta * ema + (1 - beta) * parameter (DS-Chat uses beta = 0.992).

    Both iterables must yield the same number of tensors, in matching order and shapes. The EMA copy may live on
    another device or in another dtype (e.g. float32 on the CPU).
    """
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}.")
    for ema_parameter, parameter in zip(ema_parameters, parameters, strict=True):
        if ema_parameter.shape != parameter.shape:
            raise ValueError(f"EMA parameter shape {tuple(ema_parameter.shape)} != {tuple(parameter.shape)}.")
        parameter = parameter.to(device=ema_parameter.device, dtype=ema_parameter.dtype)
        ema_parameter.mul_(beta).add_(parameter, alpha=1 - beta)
