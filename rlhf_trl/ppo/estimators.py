"""Advantage estimators without a critic (GRPO, Dr. GRPO, RLOO, REINFORCE++), loss aggregation and group batch
sizes, as pure functions on tensors.

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

from dataclasses import dataclass

import torch

from .losses import _check_same_shape, gae_advantages, masked_whiten, shaped_rewards

ADVANTAGE_ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
# Estimators that compare the completions of one prompt: they need group_size = num_generations >= 2.
ESTIMATORS_NEEDING_GROUPS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")
# Only GAE bootstraps from a learned value function; the others need no critic model at all.
ESTIMATORS_NEEDING_CRITIC = ("gae",)
# Estimators whose KL penalty can go into the reward (kl_coef > 0). GRPO and Dr. GRPO put the KL in the loss instead
# (losses.kl_loss, TRL's ``beta``), so a kl_coef for them is refused rather than silently ignored.
ESTIMATORS_WITH_KL_IN_REWARD = ("gae", "rloo", "reinforce_pp", "reinforce_pp_baseline")

LOSS_TYPES = ("token_mean", "sequence_mean", "dr_grpo")
# TRL 1.16 GRPOConfig.loss_type names of the same aggregations (see aggregate_loss for the small differences).
TRL_LOSS_TYPES = {"token_mean": ("bnpo", "dapo"), "sequence_mean": ("grpo",), "dr_grpo": ("dr_grpo",)}

# TRL's GRPOTrainer and RLOOTrainer add 1e-4 to the standard deviation; verl uses 1e-6, OpenRLHF 1e-9.
DEFAULT_STD_EPS = 1e-4


# Checks and shared building blocks


def _check_estimator(estimator: str) -> None:
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


def _zero_padding(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """values with 0 on padding. torch.where, not a product: inf * 0 would be NaN."""
    return torch.where(real, values, torch.zeros((), dtype=values.dtype, device=values.device))


def _broadcast_to_tokens(per_sequence: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """per_sequence: [B]. Returns [B, T]: each row's value on its real tokens, 0 on padding."""
    return _zero_padding(per_sequence.unsqueeze(1).expand(real.shape), real)


def sequence_scores(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """rewards: [B] scores, or [B, T] per-token rewards; mask: [B, T]. Returns [B] float scores (at least float32):
    the scores themselves, or each row's per-token rewards summed over its real tokens (as verl does)."""
    if rewards.dim() == 1:
        _real_mask(mask, rewards.shape[0])
        return rewards.to(_compute_dtype(rewards))
    _check_same_shape(rewards=rewards, mask=mask)
    real = mask.bool()
    return _zero_padding(rewards.to(_compute_dtype(rewards)), real).sum(dim=1)  # [B]


def token_rewards(
    rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, kl_coef: float = 0.0
) -> torch.Tensor:
    """Per-token reward with the KL penalty in it, as DeepSpeed-Chat, OpenRLHF and the REINFORCE++ paper use.

    rewards: [B] scores (placed on the last real token of each row) or [B, T] per-token rewards; mask: [B, T];
    kl: [B, T] per-token KL estimate (losses.kl_estimate), needed when kl_coef > 0. Returns [B, T]:
    reward - kl_coef * kl on real tokens, 0 on padding. Every row needs at least one real token.
    """
    _check_kl_coef(kl, kl_coef)
    real = _real_mask(mask, rewards.shape[0])
    dtype = _compute_dtype(rewards)
    kl = torch.zeros(real.shape, dtype=dtype, device=rewards.device) if kl is None else kl.to(dtype)
    _check_same_shape(kl=kl, mask=mask)
    kl = _zero_padding(kl, real)  # shaped_rewards multiplies by the mask: keep inf/NaN padding out of it
    if rewards.dim() == 1:
        return shaped_rewards(rewards.to(dtype), kl, mask, kl_coef)
    _check_same_shape(rewards=rewards, mask=mask)
    return _zero_padding(rewards.to(dtype), real) - kl_coef * kl


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Returns-to-go G_t = sum_{k >= t} gamma^(k - t) * r_k within each row, over its real tokens.

    rewards: [B, T] per-token rewards; mask: [B, T] right-padded. Returns [B, T], 0 on padding.
    """
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}.")
    _check_same_shape(rewards=rewards, mask=mask)
    real = mask.bool()
    _check_right_padded(real, "discounted_returns")
    # Zero rewards on padding: after the last real token nothing accumulates, so no reset is needed.
    rewards = _zero_padding(rewards, real)
    running_return = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)  # [B]
    returns_reversed = []
    for t in reversed(range(rewards.shape[1])):
        running_return = rewards[:, t] + gamma * running_return  # [B]
        returns_reversed.append(running_return)
    return _zero_padding(torch.stack(returns_reversed[::-1], dim=1), real)  # [B, T]


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
        _check_same_shape(kl=kl, mask=mask)
        scores = scores - kl_coef * _zero_padding(kl.to(scores.dtype), real).sum(dim=1)
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

    The whitening is losses.masked_whiten: population variance (divided by n), 1e-8 under the square root, as
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
        centered_rewards = _zero_padding(rewards.to(scores.dtype), mask.bool()) + token_rewards(-baseline, mask)
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
    _check_estimator(estimator)
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
        safe_values = _zero_padding(values.to(token_reward.dtype), _real_mask(mask, values.shape[0]))
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


# Loss aggregation


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
    _check_same_shape(per_token_loss=per_token_loss, mask=mask)
    if per_token_loss.dim() != 2:
        raise ValueError(f"per_token_loss must be [B, T], got shape {tuple(per_token_loss.shape)}.")
    real = mask.bool()
    loss = _zero_padding(per_token_loss, real)  # [B, T]
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


# Group batch sizes


@dataclass(frozen=True)
class GroupBatchSizes:
    """Batch sizes of a group-sampling rollout, derived once. "Completions" count rows; "prompts" count groups."""

    per_device_prompt_batch_size: int  # prompts each process generates for per rollout
    num_generations: int  # completions per prompt: G
    num_processes: int
    num_mini_batches: int
    per_device_rollout_batch_size: int  # completions per process per rollout = prompts x G
    global_prompt_batch_size: int  # prompts per rollout, all processes
    global_rollout_batch_size: int  # completions per rollout, all processes
    per_device_mini_batch_size: int  # completions per process per mini-batch, whole groups
    prompts_per_mini_batch: int  # groups per process per mini-batch


def _divisors(number: int) -> list[int]:
    return [candidate for candidate in range(1, number + 1) if number % candidate == 0]


def group_batch_sizes(
    per_device_prompt_batch_size: int,
    num_generations: int,
    num_processes: int = 1,
    num_mini_batches: int = 1,
    estimator: str | None = None,
) -> GroupBatchSizes:
    """Derive the batch sizes of a rollout where each process samples ``num_generations`` completions for each of its
    ``per_device_prompt_batch_size`` prompts, and split it into ``num_mini_batches`` mini-batches per process.

    Each process generates the whole group of each of its prompts, so a group never spans two processes; a
    mini-batch must then hold whole groups, which needs per_device_prompt_batch_size to be a multiple of
    num_mini_batches. Raises a ValueError saying what to change otherwise, or when ``estimator`` (if given) compares
    completions within groups and num_generations < 2.
    """
    for name, value in (
        ("per_device_prompt_batch_size", per_device_prompt_batch_size),
        ("num_generations", num_generations),
        ("num_processes", num_processes),
        ("num_mini_batches", num_mini_batches),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if estimator is not None:
        _check_estimator(estimator)
        if estimator in ESTIMATORS_NEEDING_GROUPS and num_generations < 2:
            raise ValueError(
                f"The {estimator} advantage estimator compares the completions of one prompt: set num_generations to "
                f"2 or more (got {num_generations}), or use gae or reinforce_pp."
            )
    if per_device_prompt_batch_size % num_mini_batches:
        next_multiple = -(-per_device_prompt_batch_size // num_mini_batches) * num_mini_batches
        choices = ", ".join(str(divisor) for divisor in _divisors(per_device_prompt_batch_size))
        raise ValueError(
            f"per_device_prompt_batch_size = {per_device_prompt_batch_size} prompts do not split into "
            f"num_mini_batches = {num_mini_batches} mini-batches of whole groups (num_generations = {num_generations} "
            f"completions per prompt would be cut apart): set num_mini_batches to one of {choices}, or "
            f"per_device_prompt_batch_size to a multiple of {num_mini_batches} (e.g. {next_multiple})."
        )
    per_device_rollout = per_device_prompt_batch_size * num_generations
    prompts_per_mini_batch = per_device_prompt_batch_size // num_mini_batches
    return GroupBatchSizes(
        per_device_prompt_batch_size=per_device_prompt_batch_size,
        num_generations=num_generations,
        num_processes=num_processes,
        num_mini_batches=num_mini_batches,
        per_device_rollout_batch_size=per_device_rollout,
        global_prompt_batch_size=per_device_prompt_batch_size * num_processes,
        global_rollout_batch_size=per_device_rollout * num_processes,
        per_device_mini_batch_size=prompts_per_mini_batch * num_generations,
        prompts_per_mini_batch=prompts_per_mini_batch,
    )
