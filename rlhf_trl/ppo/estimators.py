"""Advantage estimators without a critic (GRPO, Dr. GRPO, RLOO, REINFORCE++), and GAE behind the same entry
point, as pure functions on tensors. Their loss aggregations are ``losses.aggregate_loss``; group batch sizes are
``group_batches``.

Shapes: B = batch of completions, T = completion length (right-padded), G = group size (completions sampled for
one prompt; ``num_generations``). B = number of prompts x G, and the G completions of one prompt are adjacent rows:
rows [k * G, (k + 1) * G) share prompt k. ``mask`` is [B, T] with 1 on real completion tokens and 0 on padding.
Every function gives results that do not depend on the values at padded positions (even inf or NaN there) and
returns 0 on padding.

``rewards`` is either one score per completion ([B], the usual reward-model or reward-function outcome) or a
per-token reward ([B, T]); a per-token reward counts as the score it sums to over the real tokens.

How the same names are defined elsewhere (all checked in their source):

========================  ==========================  ============================  ================================
ours                      TRL 1.16                    OpenRLHF                      verl
========================  ==========================  ============================  ================================
gae                       (PPO, experimental)         ``gae``                       ``gae``
grpo                      GRPOTrainer,                ``group_norm``                ``grpo``
                          scale_rewards="group"
dr_grpo                   GRPOTrainer,                ``dr_grpo``                   ``grpo`` with
                          scale_rewards="none"                                      norm_adv_by_std_in_grpo=False
rloo                      RLOOTrainer                 ``rloo``                      ``rloo``
reinforce_pp              --                          ``reinforce``                 ``reinforce_plus_plus``
reinforce_pp_baseline     --                          ``reinforce_baseline``        ``reinforce_plus_plus_baseline``
========================  ==========================  ============================  ================================

The details where they differ are in each function's docstring.
"""

from __future__ import annotations

import torch

from rlhf_trl.ppo.advantages import gae_advantages, kl_estimate, shaped_rewards
from rlhf_trl.ppo.masks import check_same_shape, fill_padding, masked_whiten

ADVANTAGE_ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
# Estimators that compare the completions of one prompt: they need group_size = num_generations >= 2.
ESTIMATORS_NEEDING_GROUPS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")
# Only GAE bootstraps from a learned value function; the others need no critic model at all.
ESTIMATORS_NEEDING_CRITIC = ("gae",)
# Estimators whose KL penalty can go into the reward (kl_coef > 0). GRPO and Dr. GRPO put the KL in the loss instead
# (losses.kl_loss, TRL's ``beta``), so a kl_coef for them is refused rather than silently ignored.
ESTIMATORS_WITH_KL_IN_REWARD = ("gae", "rloo", "reinforce_pp", "reinforce_pp_baseline")

# TRL's GRPOTrainer and RLOOTrainer add 1e-4 to the standard deviation; verl uses 1e-6, OpenRLHF 1e-9.
DEFAULT_STD_EPS = 1e-4

# Checks and shared building blocks


def check_advantage_estimator(estimator: str) -> None:
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"Unknown advantage estimator {estimator!r}; choose one of {', '.join(ADVANTAGE_ESTIMATORS)}."
        )


def _check_groups(batch_size: int, group_size: int, estimator: str) -> None:
    """Raise a ValueError unless the batch splits into groups of ``group_size`` >= 2 completions."""
    if group_size < 2:
        raise ValueError(
            f"The {estimator} advantage estimator compares the completions of one prompt, so it needs a group size "
            f"(num_generations) of at least 2, got {group_size}: sample 2 or more completions per prompt, or use "
            f"gae or reinforce_pp."
        )
    if batch_size % group_size:
        raise ValueError(
            f"A batch of {batch_size} completions does not split into groups of {group_size} (num_generations): "
            f"the batch must hold whole groups, num_prompts x {group_size} rows."
        )


def _check_right_padded(real: torch.Tensor, function: str) -> None:
    if (real[:, 1:] & ~real[:, :-1]).any():
        raise ValueError(
            f"{function} needs right-padded masks (1...1 0...0 per row); found a real token after padding."
        )


def _check_kl_coef(kl: torch.Tensor | None, kl_coef: float) -> None:
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}.")
    if kl_coef > 0 and kl is None:
        raise ValueError(f"kl_coef = {kl_coef} needs the per-token KL (kl [B, T]); got none.")


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """At least float32: group statistics in bf16 lose about three digits."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _real_mask(mask: torch.Tensor, batch_size: int) -> torch.Tensor:
    if mask.dim() != 2 or mask.shape[0] != batch_size:
        raise ValueError(f"mask must be [B, T] with B = {batch_size}, got shape {tuple(mask.shape)}.")
    return mask.bool()


def _broadcast_to_tokens(per_sequence: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """per_sequence: [B]. Returns [B, T]: each row's value on its real tokens, 0 on padding."""
    return fill_padding(per_sequence.unsqueeze(1).expand(real.shape), real)


def sequence_scores(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """rewards: [B] scores, or [B, T] per-token rewards; mask: [B, T]. Returns [B] float scores (at least float32):
    the scores themselves, or each row's per-token rewards summed over its real tokens (as verl does)."""
    if rewards.dim() == 1:
        _real_mask(mask, rewards.shape[0])
        return rewards.to(_compute_dtype(rewards))
    check_same_shape(rewards=rewards, mask=mask)
    real = mask.bool()
    return fill_padding(rewards.to(_compute_dtype(rewards)), real).sum(dim=1)  # [B]


def token_rewards(
    rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, kl_coef: float = 0.0
) -> torch.Tensor:
    """Per-token reward with the KL penalty in it, as DeepSpeed-Chat, OpenRLHF and the REINFORCE++ paper use.

    rewards: [B] scores (placed on the last real token of each row) or [B, T] per-token rewards; mask: [B, T];
    kl: [B, T] per-token KL estimate (advantages.kl_estimate), needed when kl_coef > 0. Returns [B, T]:
    reward - kl_coef * kl on real tokens, 0 on padding. Every row needs at least one real token.
    """
    _check_kl_coef(kl, kl_coef)
    real = _real_mask(mask, rewards.shape[0])
    dtype = _compute_dtype(rewards)
    kl = torch.zeros(real.shape, dtype=dtype, device=rewards.device) if kl is None else kl.to(dtype)
    check_same_shape(kl=kl, mask=mask)
    kl = fill_padding(kl, real)  # shaped_rewards multiplies by the mask: keep inf/NaN padding out of it
    if rewards.dim() == 1:
        return shaped_rewards(rewards.to(dtype), kl, mask, kl_coef)
    check_same_shape(rewards=rewards, mask=mask)
    return fill_padding(rewards.to(dtype), real) - kl_coef * kl


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Returns-to-go G_t = sum_{k >= t} gamma^(k - t) * r_k within each row, over its real tokens.

    rewards: [B, T] per-token rewards; mask: [B, T] right-padded. Returns [B, T], 0 on padding.
    """
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}.")
    check_same_shape(rewards=rewards, mask=mask)
    real = mask.bool()
    _check_right_padded(real, "discounted_returns")
    # Zero rewards on padding: after the last real token nothing accumulates, so no reset is needed.
    rewards = fill_padding(rewards, real)
    running_return = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)  # [B]
    returns_reversed = []
    for t in reversed(range(rewards.shape[1])):
        running_return = rewards[:, t] + gamma * running_return  # [B]
        returns_reversed.append(running_return)
    return fill_padding(torch.stack(returns_reversed[::-1], dim=1), real)  # [B, T]


def _group_view(scores: torch.Tensor, group_size: int, estimator: str) -> torch.Tensor:
    """scores: [B]. Returns [B / G, G]: one row per prompt."""
    _check_groups(scores.shape[0], group_size, estimator)
    return scores.view(-1, group_size)


def _all_equal(grouped: torch.Tensor) -> torch.Tensor:
    """grouped: [P, G]. Returns [P, 1] bool: whether every completion of the group got the same reward.

    Such a group carries no learning signal. Its advantages are set to exactly 0: the rounded group mean can differ
    from the common value by one ulp, and dividing that by a tiny std + eps would give noise instead of 0.
    """
    return (grouped == grouped[:, :1]).all(dim=1, keepdim=True)


# Critic-free advantage estimators


def grpo_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = DEFAULT_STD_EPS
) -> torch.Tensor:
    """GRPO's group-normalised outcome advantage (Shao et al. 2024), the same on every real token of a completion.

        A_i = (r_i - mean_group(r)) / (std_group(r) + eps)        scale_by_std=False (Dr. GRPO): A_i = r_i - mean

    rewards: [B] or [B, T] (summed over real tokens); mask: [B, T]; group_size: G >= 2. Returns [B, T], 0 on
    padding. A group whose rewards are all equal gets exactly 0.

    The std is the unbiased (Bessel-corrected, divided by G - 1) one, as in TRL's GRPOTrainer, verl and OpenRLHF,
    and eps is added to the std, not under the square root. They differ only in eps: TRL 1e-4 (our default), verl
    1e-6, OpenRLHF 1e-9. OpenRLHF's ``group_norm`` also puts the per-token KL in the reward and forms returns-to-go
    with gamma = 1; here, as in TRL and verl, the KL belongs in the loss (losses.kl_loss).
    """
    scores = sequence_scores(rewards, mask)  # [B]
    real = mask.bool()
    grouped = _group_view(scores, group_size, "grpo" if scale_by_std else "dr_grpo")  # [P, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # [P, G]
    if scale_by_std:
        centered = centered / (grouped.std(dim=1, keepdim=True, correction=1) + eps)
    centered = torch.where(_all_equal(grouped), torch.zeros_like(centered), centered)
    return _broadcast_to_tokens(centered.reshape(-1), real)  # [B, T]


def dr_grpo_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): A_i = r_i - mean_group(r), no division by the group std, which would weight easy
    and hard prompts (small std) more. rewards: [B] or [B, T]; mask: [B, T]. Returns [B, T], 0 on padding.

    Same as TRL's GRPOTrainer with scale_rewards="none" and verl's ``grpo`` with norm_adv_by_std_in_grpo=False.
    OpenRLHF's ``dr_grpo`` subtracts the same mean but then adds the per-token KL to the reward and forms
    returns-to-go (gamma = 1), so its advantage varies along the completion when kl_coef > 0.
    """
    return grpo_advantages(rewards, mask, group_size, scale_by_std=False)


def rloo_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): the baseline of a completion is the mean
    reward of the other G - 1 completions of its prompt.

        R_i = r_i - kl_coef * sum_t kl_{i,t}          (sequence-level KL penalty, as TRL's RLOOTrainer)
        A_i = R_i - (sum_j R_j - R_i) / (G - 1)  =  G / (G - 1) * (R_i - mean_group(R))

    rewards: [B] or [B, T]; mask: [B, T]; group_size: G >= 2; kl: [B, T] per-token KL (TRL uses k1), needed when
    kl_coef > 0. Returns [B, T], the same on every real token, 0 on padding.

    The two forms above are the same number: TRL and OpenRLHF write the first, verl the second (its G / (G - 1)
    factor is exactly what turns "minus the group mean" into "minus the mean of the others"); none scales further.
    TRL's RLOOTrainer may then whiten over the batch (normalize_advantages, off by default); OpenRLHF puts the KL per
    token into the reward after the baseline instead of summing it first.
    """
    _check_kl_coef(kl, kl_coef)
    scores = sequence_scores(rewards, mask)  # [B]
    real = mask.bool()
    if kl_coef > 0:
        check_same_shape(kl=kl, mask=mask)
        scores = scores - kl_coef * fill_padding(kl.to(scores.dtype), real).sum(dim=1)
    grouped = _group_view(scores, group_size, "rloo")  # [P, G]
    leave_one_out_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # [P, G]
    advantages = grouped - leave_one_out_mean
    advantages = torch.where(_all_equal(grouped), torch.zeros_like(advantages), advantages)
    return _broadcast_to_tokens(advantages.reshape(-1), real)  # [B, T]


def reinforce_pp_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025): per-token rewards with the KL in them, discounted returns-to-go, whitened over the
    whole batch.

        r_t = score * [t is the last real token] - kl_coef * kl_t
        G_t = sum_{k >= t} gamma^(k - t) r_k
        A_t = (G_t - mean(G)) / sqrt(var(G) + 1e-8)       mean and var over every real token of the batch

    rewards: [B] or [B, T]; mask: [B, T] right-padded; kl: [B, T], needed when kl_coef > 0. Returns (advantages
    [B, T], returns [B, T] = G before whitening), both 0 on padding.

    The whitening is masks.masked_whiten: population variance (divided by n), 1e-8 under the square root, as
    OpenRLHF's ``reinforce`` (which clamps the variance at 1e-8 instead of adding it). verl's
    ``reinforce_plus_plus`` uses the unbiased variance: a factor sqrt((n - 1) / n), negligible for real batches.
    "Global" means this batch: with several processes, whiten after gathering, or each process whitens its own.
    """
    token_reward = token_rewards(rewards, mask, kl, kl_coef)  # [B, T]
    returns = discounted_returns(token_reward, mask, gamma)  # [B, T]
    return masked_whiten(returns, mask), returns


def reinforce_pp_baseline_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ with a group baseline: the mean score of the prompt's group is subtracted from each score first,
    then the completion is treated as in reinforce_pp_advantages (KL in the reward, returns-to-go, global whitening).

    rewards: [B] or [B, T] (the group mean of the row sums is subtracted at the last real token); mask: [B, T]
    right-padded; group_size: G >= 2; kl: [B, T], needed when kl_coef > 0. Returns (advantages [B, T], returns
    [B, T] before whitening), both 0 on padding.

    As OpenRLHF's ``reinforce_baseline`` (which forces gamma = 1; here gamma is the caller's). verl's
    ``reinforce_plus_plus_baseline`` broadcasts the centred sequence score (KL included in it, if any) to every
    token without returns-to-go and whitens with the unbiased variance; with kl_coef = 0 and gamma = 1 the two agree
    up to that variance factor.
    """
    scores = sequence_scores(rewards, mask)  # [B]
    grouped = _group_view(scores, group_size, "reinforce_pp_baseline")  # [P, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # [P, G]
    centered = torch.where(_all_equal(grouped), torch.zeros_like(centered), centered).reshape(-1)  # [B]
    if rewards.dim() == 1:
        centered_rewards = centered
    else:
        # Per-token rewards keep their shape; the baseline comes off at the last real token, where a score sits.
        baseline = scores - centered  # [B]
        centered_rewards = fill_padding(rewards.to(scores.dtype), mask.bool()) + token_rewards(-baseline, mask)
    return reinforce_pp_advantages(centered_rewards, mask, kl, kl_coef, gamma)


# One entry point


def compute_advantages(
    estimator: str,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int = 1,
    values: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    lam: float = 0.95,
    std_eps: float = DEFAULT_STD_EPS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Advantages of ``estimator`` (one of ADVANTAGE_ESTIMATORS). Returns (advantages [B, T], returns [B, T] or
    None), 0 on padding; returns are the critic's targets for gae, the unwhitened returns-to-go for the REINFORCE++
    estimators, and None for the outcome-only ones (grpo, dr_grpo, rloo).

    rewards: [B] scores or [B, T] per-token rewards; mask: [B, T] right-padded; group_size: G, the completions per
    prompt (adjacent rows); values: [B, T] critic values (gae only); kl: [B, T] per-token KL, with kl_coef its
    weight in the reward (refused for grpo and dr_grpo: they take the KL in the loss); gamma: discount (gae and
    REINFORCE++); lam: GAE's lambda; std_eps: added to the group std (grpo).
    """
    check_advantage_estimator(estimator)
    if kl_coef and estimator not in ESTIMATORS_WITH_KL_IN_REWARD:
        raise ValueError(
            f"The {estimator} advantage estimator takes no KL in the reward (kl_coef = {kl_coef}); "
            f"put the KL in the loss (losses.kl_loss) instead, or choose one of "
            f"{', '.join(ESTIMATORS_WITH_KL_IN_REWARD)}."
        )
    if estimator in ESTIMATORS_NEEDING_CRITIC and values is None:
        raise ValueError(f"The {estimator} advantage estimator needs critic values [B, T]; got none.")
    if estimator not in ESTIMATORS_NEEDING_CRITIC and values is not None:
        raise ValueError(f"The {estimator} advantage estimator uses no critic; do not pass values.")
    if estimator == "gae":
        real = mask.bool()
        token_reward = token_rewards(rewards, mask, kl, kl_coef)  # [B, T]
        safe_values = fill_padding(values.to(token_reward.dtype), _real_mask(mask, values.shape[0]))
        advantages, returns = gae_advantages(safe_values, token_reward, real.to(token_reward.dtype), gamma, lam)
        return advantages, returns
    if estimator == "grpo":
        return grpo_advantages(rewards, mask, group_size, scale_by_std=True, eps=std_eps), None
    if estimator == "dr_grpo":
        return dr_grpo_advantages(rewards, mask, group_size), None
    if estimator == "rloo":
        return rloo_advantages(rewards, mask, group_size, kl, kl_coef), None
    if estimator == "reinforce_pp":
        return reinforce_pp_advantages(rewards, mask, kl, kl_coef, gamma)
    return reinforce_pp_baseline_advantages(rewards, mask, group_size, kl, kl_coef, gamma)


def rollout_advantages(scores, values, logprobs, ref_logprobs, mask, loss_mask, args, kl_coef: float):
    """What PPO's update needs from one process's rollout, as the config asks: returns (kl, rewards, advantages,
    returns), each [B, T] (returns None for the outcome-only estimators).

    scores: [B] shaped scores; values: [B, T] critic values (None without a critic); logprobs, ref_logprobs: [B, T];
    mask: [B, T] real completion tokens; loss_mask: [B, T] the tokens that count (invalid rewards dropped); args: the
    PPOConfig (advantage_estimator, kl_estimator, gamma, lam, whiten_rewards, whiten_advantages, num_generations);
    kl_coef: the KL's weight in the reward (0 when the KL is a loss). ``gae`` is DS-Chat's path: KL-shaped per-token
    rewards (optionally whitened), GAE. The critic-free estimators see groups of num_generations adjacent rows; the
    REINFORCE++ ones whiten over this process's rollout, not over every process's batch.
    """
    # Log-probs filled at padding before the estimator (k3 takes an exp): padding must not turn into NaN.
    kl = fill_padding(
        kl_estimate(fill_padding(logprobs, mask), fill_padding(ref_logprobs, mask), args.kl_estimator), mask
    )
    if args.advantage_estimator == "gae":
        rewards = shaped_rewards(scores, kl, mask, kl_coef)
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, loss_mask, shift_mean=False)
        advantages, returns = gae_advantages(values, rewards, mask, args.gamma, args.lam)
    else:
        advantages, returns = compute_advantages(
            args.advantage_estimator,
            scores,
            mask,
            group_size=args.num_generations,
            kl=kl,
            kl_coef=kl_coef,
            gamma=args.gamma,
        )
        rewards = token_rewards(scores, mask, kl, kl_coef)
    if args.whiten_advantages:
        advantages = masked_whiten(advantages, loss_mask)
    return kl, rewards, advantages, returns
