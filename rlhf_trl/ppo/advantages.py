"""From reward scores to PPO's advantages, as pure functions on tensors: score shaping (missing-EOS penalty,
normalisation, clipping), the per-token KL estimate, DeepSpeed-Chat's KL-shaped per-token rewards and GAE.

Shapes: B = batch, T = completion length (right-padded); ``mask`` is [B, T] as in ``masks``. The defaults of
DeepSpeed-Chat's step 3 are: k1 KL in the reward with coefficient 0.1, gamma = 1.0, lambda = 0.95, scores clipped
to +-5, no advantage whitening.
"""

from __future__ import annotations

import torch

from rlhf_trl.ppo.masks import check_same_shape, fill_padding

KL_ESTIMATORS = ("k1", "k2", "k3")


def check_kl_estimator(estimator: str) -> None:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}.")


def penalize_missing_eos(scores: torch.Tensor, ended: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """scores: [B]; ended: [B] bool, whether the answer has an EOS. Returns [B]: ``penalty`` taken off the scores of
    answers cut at the length limit (TRL's missing_eos_penalty); the scores unchanged when penalty is None."""
    if penalty is None:
        return scores
    return torch.where(ended, scores, scores - penalty)


def shape_scores(
    scores: torch.Tensor,
    ended: torch.Tensor,
    missing_eos_penalty: float | None = None,
    normalization: tuple[float, float] | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """The score PPO trains on, from the reward sources' score. scores: [B]; ended: [B] bool (answer has an EOS).

    In order: ``penalize_missing_eos``; with normalization = (mean, std), (score - mean) / (std + 1e-8); with clip,
    clamped to [-clip, clip] (DS-Chat clips to +-5). Returns [B].
    """
    shaped = penalize_missing_eos(scores, ended, missing_eos_penalty)
    if normalization is not None:
        mean, std = normalization
        shaped = (shaped - mean) / (std + 1e-8)
    if clip is not None:
        shaped = shaped.clamp(-clip, clip)
    return shaped


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the log-probs of tokens sampled from the policy.

    logprobs, ref_logprobs: [B, T]. Returns [B, T]. Schulman's estimators ("Approximating KL divergence", 2020),
    with log_ratio = logprobs - ref_logprobs:
      k1 = log_ratio                                   unbiased, high variance, can be negative
      k2 = 0.5 * log_ratio ** 2                        biased, low variance, >= 0
      k3 = exp(-log_ratio) - 1 + log_ratio             unbiased, low variance, >= 0
    """
    check_kl_estimator(estimator)
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
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
    check_same_shape(kl=kl, mask=mask)
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
    check_same_shape(values=values, rewards=rewards, mask=mask)
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
