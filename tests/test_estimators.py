"""Each function of rlhf_trl.ppo.estimators against a naive reference written with plain Python loops over groups,
rows and tokens, on random right-padded batches; plus the edge cases: padding holding inf/NaN, groups of size 1
and 2, groups with identical rewards, whitening over the whole batch, and the group batch-size check."""

from __future__ import annotations

import math
import re
import statistics

import pytest
import torch

from rlhf_trl.ppo.advantages import gae_advantages, shaped_rewards
from rlhf_trl.ppo.estimators import (
    ADVANTAGE_ESTIMATORS,
    ESTIMATORS_NEEDING_CRITIC,
    ESTIMATORS_NEEDING_GROUPS,
    compute_advantages,
    discounted_returns,
    dr_grpo_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    sequence_scores,
    token_rewards,
)
from rlhf_trl.ppo.group_batches import group_batch_sizes
from rlhf_trl.ppo.losses import LOSS_TYPES, TRL_LOSS_TYPES, aggregate_loss

DTYPE = torch.float64  # the references use Python floats (double precision); compare at tight tolerances


# ----------------------------------------------------------------------------------------------------------------
# Random grouped batches and naive references (Python floats, loops, the statistics module)
# ----------------------------------------------------------------------------------------------------------------


def random_grouped_batch(seed: int, num_prompts: int = 3, group_size: int = 4, length: int = 7):
    """Scores [B], per-token KL [B, T] and a right-padded mask [B, T] with lengths in [1, length]."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = num_prompts * group_size
    lengths = torch.randint(1, length + 1, (batch_size,), generator=generator).tolist()
    lengths[0], lengths[-1] = 1, length
    mask = torch.zeros(batch_size, length, dtype=torch.long)
    for row, row_length in enumerate(lengths):
        mask[row, :row_length] = 1
    scores = torch.randn(batch_size, generator=generator, dtype=DTYPE)
    kl = torch.randn(batch_size, length, generator=generator, dtype=DTYPE) * 0.3
    return scores, kl, mask, lengths


def scramble_padding(tensor: torch.Tensor, mask: torch.Tensor, fill: float | None = None) -> torch.Tensor:
    """A copy of ``tensor`` whose padded positions hold garbage: large random values, or ``fill`` (inf, NaN)."""
    generator = torch.Generator().manual_seed(99)
    noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * 100 + 37
    if fill is not None:
        noise = torch.full_like(tensor, fill)
    return torch.where(mask.bool(), tensor, noise)


def groups_of(values: list[float], group_size: int) -> list[list[float]]:
    return [values[start : start + group_size] for start in range(0, len(values), group_size)]


def broadcast_reference(per_sequence: list[float], lengths: list[int], length: int) -> list[list[float]]:
    return [
        [value if t < row_length else 0.0 for t in range(length)] for value, row_length in zip(per_sequence, lengths)
    ]


def reference_grpo(scores: list[float], group_size: int, eps: float, scale: bool) -> list[float]:
    advantages = []
    for group in groups_of(scores, group_size):
        mean = sum(group) / len(group)
        std = statistics.stdev(group)  # unbiased, divided by G - 1
        for score in group:
            advantages.append((score - mean) / (std + eps) if scale else score - mean)
    return advantages


def reference_rloo(scores: list[float], group_size: int) -> list[float]:
    advantages = []
    for group in groups_of(scores, group_size):
        for i, score in enumerate(group):
            others = [other for j, other in enumerate(group) if j != i]
            advantages.append(score - sum(others) / len(others))
    return advantages


def reference_token_rewards(scores, kl_rows, lengths, kl_coef, length) -> list[list[float]]:
    rewards = []
    for score, kl_row, row_length in zip(scores, kl_rows, lengths):
        row = [0.0] * length
        for t in range(row_length):
            row[t] = -kl_coef * kl_row[t]
        row[row_length - 1] += score
        rewards.append(row)
    return rewards


def reference_returns(rewards, lengths, gamma) -> list[list[float]]:
    returns = []
    for reward_row, row_length in zip(rewards, lengths):
        row = [0.0] * len(reward_row)
        for t in range(row_length):
            row[t] = sum(gamma ** (k - t) * reward_row[k] for k in range(t, row_length))
        returns.append(row)
    return returns


def reference_whiten(rows, lengths) -> list[list[float]]:
    """Whitened over every real token of the whole batch: population variance, 1e-8 under the square root."""
    real_values = [row[t] for row, row_length in zip(rows, lengths) for t in range(row_length)]
    mean = sum(real_values) / len(real_values)
    variance = sum((value - mean) ** 2 for value in real_values) / len(real_values)
    return [
        [(row[t] - mean) / math.sqrt(variance + 1e-8) if t < row_length else 0.0 for t in range(len(row))]
        for row, row_length in zip(rows, lengths)
    ]


def assert_rows_close(actual: torch.Tensor, expected: list[list[float]], tolerance: float = 1e-10) -> None:
    assert actual.shape == (len(expected), len(expected[0]))
    assert torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=tolerance, rtol=tolerance)


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------


def test_registry_is_consistent():
    assert ADVANTAGE_ESTIMATORS == ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
    assert set(ESTIMATORS_NEEDING_GROUPS) <= set(ADVANTAGE_ESTIMATORS)
    assert ESTIMATORS_NEEDING_CRITIC == ("gae",)
    assert set(TRL_LOSS_TYPES) == set(LOSS_TYPES)


def test_unknown_estimator_names_the_choices():
    scores, _, mask, _ = random_grouped_batch(0)
    with pytest.raises(ValueError, match="Unknown advantage estimator 'ppo'.*grpo"):
        compute_advantages("ppo", scores, mask, group_size=4)


# ----------------------------------------------------------------------------------------------------------------
# GRPO, Dr. GRPO, RLOO
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("group_size", [2, 3, 4])
def test_grpo_and_dr_grpo_vs_reference(seed, group_size):
    scores, _, mask, lengths = random_grouped_batch(seed, group_size=group_size)
    length = mask.shape[1]
    grpo = grpo_advantages(scores, mask, group_size, eps=1e-4)
    expected = reference_grpo(scores.tolist(), group_size, 1e-4, scale=True)
    assert_rows_close(grpo, broadcast_reference(expected, lengths, length))
    dr_grpo = dr_grpo_advantages(scores, mask, group_size)
    expected = reference_grpo(scores.tolist(), group_size, 1e-4, scale=False)
    assert_rows_close(dr_grpo, broadcast_reference(expected, lengths, length))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("group_size", [2, 3, 5])
def test_rloo_vs_reference(seed, group_size):
    scores, _, mask, lengths = random_grouped_batch(seed, group_size=group_size)
    advantages = rloo_advantages(scores, mask, group_size)
    expected = reference_rloo(scores.tolist(), group_size)
    assert_rows_close(advantages, broadcast_reference(expected, lengths, mask.shape[1]))


def test_rloo_equals_scaled_group_centering():
    """r_i - mean of the others = G / (G - 1) * (r_i - group mean): verl's form gives the same numbers."""
    scores, _, mask, _ = random_grouped_batch(1, group_size=4)
    rloo = rloo_advantages(scores, mask, 4)
    assert torch.allclose(rloo, 4 / 3 * dr_grpo_advantages(scores, mask, 4), atol=1e-12)


def test_rloo_sequence_level_kl_penalty_vs_reference():
    """As TRL's RLOOTrainer: kl_coef times the KL summed over real tokens comes off the score before the baseline."""
    scores, kl, mask, lengths = random_grouped_batch(2, group_size=3)
    advantages = rloo_advantages(scores, mask, 3, scramble_padding(kl, mask, float("inf")), kl_coef=0.05)
    penalised = [
        score - 0.05 * sum(kl_row[:row_length])
        for score, kl_row, row_length in zip(scores.tolist(), kl.tolist(), lengths)
    ]
    expected = reference_rloo(penalised, 3)
    assert_rows_close(advantages, broadcast_reference(expected, lengths, mask.shape[1]))


def test_group_size_two_edge_case():
    """With G = 2, GRPO gives +-1/sqrt(2) (unbiased std of two values is |a - b| / sqrt(2)), RLOO gives +-(a - b)."""
    scores = torch.tensor([3.0, 1.0, -2.0, 0.5], dtype=DTYPE)
    mask = torch.ones(4, 2, dtype=torch.long)
    grpo = grpo_advantages(scores, mask, 2, eps=0.0)[:, 0]
    assert torch.allclose(grpo, torch.tensor([1, -1, -1, 1], dtype=DTYPE) / math.sqrt(2), atol=1e-12)
    rloo = rloo_advantages(scores, mask, 2)[:, 0]
    assert torch.allclose(rloo, torch.tensor([2.0, -2.0, -2.5, 2.5], dtype=DTYPE), atol=1e-12)
    assert torch.allclose(dr_grpo_advantages(scores, mask, 2)[:, 0], rloo / 2, atol=1e-12)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_identical_rewards_in_a_group_give_zero_without_nan(estimator):
    # 0.1 three times: the float mean is not exactly 0.1, so without care std ~ 1e-17 and (r - mean) / std is noise.
    scores = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.5], dtype=torch.float32)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    advantages, _ = compute_advantages(estimator, scores, mask, group_size=3, std_eps=0.0)
    assert torch.isfinite(advantages).all()
    if estimator == "reinforce_pp_baseline":  # whitened globally: the first group sits at the batch mean
        first_group = advantages[:3][mask[:3].bool()]
        assert torch.allclose(first_group, first_group[0].expand_as(first_group))
    else:
        assert torch.equal(advantages[:3], torch.zeros(3, 3))
        assert advantages[3:][mask[3:].bool()].abs().sum() > 0


@pytest.mark.parametrize("estimator", ESTIMATORS_NEEDING_GROUPS)
def test_groups_of_size_one_are_rejected(estimator):
    scores, _, mask, _ = random_grouped_batch(0)
    with pytest.raises(ValueError, match=f"{estimator} advantage estimator .* at least 2, got 1"):
        compute_advantages(estimator, scores, mask, group_size=1)


def test_batch_that_is_not_whole_groups_is_rejected():
    scores, _, mask, _ = random_grouped_batch(0, num_prompts=3, group_size=4)  # B = 12
    with pytest.raises(ValueError, match="12 completions does not split into groups of 5"):
        grpo_advantages(scores, mask, 5)


def test_per_token_rewards_count_as_their_real_sum():
    scores, _, mask, _ = random_grouped_batch(3)
    generator = torch.Generator().manual_seed(5)
    per_token = torch.rand(mask.shape, generator=generator, dtype=DTYPE)
    row_sums = torch.tensor(
        [sum(value for value, real in zip(row, mask_row) if real) for row, mask_row in zip(per_token.tolist(), mask)],
        dtype=DTYPE,
    )
    assert torch.allclose(sequence_scores(scramble_padding(per_token, mask, float("nan")), mask), row_sums)
    assert torch.allclose(grpo_advantages(per_token, mask, 4), grpo_advantages(row_sums, mask, 4))


# ----------------------------------------------------------------------------------------------------------------
# REINFORCE++ and its group baseline
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_token_rewards_and_discounted_returns_vs_reference(seed, gamma):
    scores, kl, mask, lengths = random_grouped_batch(seed)
    length = mask.shape[1]
    rewards = token_rewards(scores, mask, kl, kl_coef=0.1)
    expected_rewards = reference_token_rewards(scores.tolist(), kl.tolist(), lengths, 0.1, length)
    assert_rows_close(rewards, expected_rewards)
    assert torch.equal(rewards, shaped_rewards(scores, kl * mask, mask, 0.1))  # the one home of DS-Chat's shaping
    assert_rows_close(discounted_returns(rewards, mask, gamma), reference_returns(expected_rewards, lengths, gamma))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma", [1.0, 0.95])
def test_reinforce_pp_vs_reference(seed, gamma):
    scores, kl, mask, lengths = random_grouped_batch(seed)
    length = mask.shape[1]
    advantages, returns = reinforce_pp_advantages(scores, mask, kl, kl_coef=0.05, gamma=gamma)
    expected_returns = reference_returns(
        reference_token_rewards(scores.tolist(), kl.tolist(), lengths, 0.05, length), lengths, gamma
    )
    assert_rows_close(returns, expected_returns)
    assert_rows_close(advantages, reference_whiten(expected_returns, lengths))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("group_size", [2, 4])
def test_reinforce_pp_baseline_vs_reference(seed, group_size):
    scores, kl, mask, lengths = random_grouped_batch(seed, group_size=group_size)
    length = mask.shape[1]
    advantages, returns = reinforce_pp_baseline_advantages(scores, mask, group_size, kl, kl_coef=0.05)
    centered = []
    for group in groups_of(scores.tolist(), group_size):
        centered.extend(score - sum(group) / len(group) for score in group)
    expected_returns = reference_returns(
        reference_token_rewards(centered, kl.tolist(), lengths, 0.05, length), lengths, 1.0
    )
    assert_rows_close(returns, expected_returns)
    assert_rows_close(advantages, reference_whiten(expected_returns, lengths))


def test_reinforce_pp_baseline_per_token_rewards_match_scores_at_the_end():
    """A [B, T] reward with all of it on the last real token is the same as the [B] score."""
    scores, kl, mask, lengths = random_grouped_batch(6)
    per_token = token_rewards(scores, mask)
    from_scores = reinforce_pp_baseline_advantages(scores, mask, 4, kl, 0.1)
    from_tokens = reinforce_pp_baseline_advantages(per_token, mask, 4, kl, 0.1)
    assert torch.allclose(from_scores[0], from_tokens[0], atol=1e-12)
    assert torch.allclose(from_scores[1], from_tokens[1], atol=1e-12)


def test_whitening_is_over_the_whole_batch_not_per_group_or_row():
    scores, kl, mask, _ = random_grouped_batch(7)
    real = mask.bool()
    advantages, _ = reinforce_pp_advantages(scores, mask, kl, kl_coef=0.1)
    values = advantages[real]
    assert values.mean().abs() < 1e-10
    assert abs(values.var(correction=0).item() - 1) < 1e-6
    first_group = advantages[:4][real[:4]]
    assert first_group.mean().abs() > 1e-3  # a group alone is not centred: the statistics are the batch's
    # Whitening a half batch gives different numbers: the statistics come from whatever batch is passed.
    half, _ = reinforce_pp_advantages(scores[:6], mask[:6], kl[:6], kl_coef=0.1)
    assert not torch.allclose(half, advantages[:6])


def test_reinforce_pp_needs_right_padding_and_kl_when_weighted():
    scores, kl, mask, _ = random_grouped_batch(0)
    holes = mask.clone()
    holes[-1, 2] = 0
    with pytest.raises(ValueError, match="right-padded"):
        reinforce_pp_advantages(scores, holes)
    with pytest.raises(ValueError, match="kl_coef = 0.1 needs the per-token KL"):
        reinforce_pp_advantages(scores, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="gamma must be in"):
        reinforce_pp_advantages(scores, mask, gamma=1.5)


# ----------------------------------------------------------------------------------------------------------------
# Dispatch and padding independence
# ----------------------------------------------------------------------------------------------------------------


def test_compute_advantages_dispatches_gae_to_losses():
    scores, kl, mask, _ = random_grouped_batch(4)
    values = torch.randn(mask.shape, generator=torch.Generator().manual_seed(8), dtype=DTYPE)
    advantages, returns = compute_advantages(
        "gae", scores, mask, values=values, kl=kl, kl_coef=0.1, gamma=1.0, lam=0.95
    )
    expected = gae_advantages(values, shaped_rewards(scores, kl * mask, mask, 0.1), mask, 1.0, 0.95)
    assert torch.allclose(advantages, expected[0], atol=1e-12)
    assert torch.allclose(returns, expected[1], atol=1e-12)
    with pytest.raises(ValueError, match="gae advantage estimator needs critic values"):
        compute_advantages("gae", scores, mask)
    with pytest.raises(ValueError, match="grpo advantage estimator uses no critic"):
        compute_advantages("grpo", scores, mask, group_size=4, values=values)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
def test_kl_in_the_reward_is_refused_where_it_belongs_in_the_loss(estimator):
    scores, kl, mask, _ = random_grouped_batch(0)
    with pytest.raises(ValueError, match="put the KL in the loss"):
        compute_advantages(estimator, scores, mask, group_size=4, kl=kl, kl_coef=0.1)


@pytest.mark.parametrize("estimator", ADVANTAGE_ESTIMATORS)
@pytest.mark.parametrize("fill", [None, float("inf"), float("nan")])
def test_padding_values_do_not_change_real_results(estimator, fill):
    scores, kl, mask, _ = random_grouped_batch(11)
    values = torch.randn(mask.shape, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    options = {"group_size": 4}
    if estimator != "grpo" and estimator != "dr_grpo":
        options.update(kl=kl, kl_coef=0.1)
    if estimator == "gae":
        options.update(values=values)
    clean = compute_advantages(estimator, scores, mask, **options)
    options["kl"] = scramble_padding(kl, mask, fill) if "kl" in options else None
    if estimator == "gae":
        options["values"] = scramble_padding(values, mask, fill)
    per_token_scores = token_rewards(scores, mask)  # the same rewards given per token, with garbage padding
    dirty = compute_advantages(estimator, scramble_padding(per_token_scores, mask, fill), mask, **options)
    for clean_tensor, dirty_tensor in zip(clean, dirty):
        if clean_tensor is None:
            assert dirty_tensor is None
            continue
        assert torch.isfinite(dirty_tensor).all()
        assert torch.allclose(clean_tensor, dirty_tensor, atol=1e-12)
        assert torch.equal(dirty_tensor[~mask.bool()], torch.zeros_like(dirty_tensor[~mask.bool()]))


def test_low_precision_rewards_are_computed_in_float32():
    scores = torch.tensor([1.0, 2.0, 3.5, 3.0], dtype=torch.bfloat16)
    mask = torch.ones(4, 3, dtype=torch.long)
    assert grpo_advantages(scores, mask, 2).dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------
# Loss aggregation
# ----------------------------------------------------------------------------------------------------------------


def reference_aggregate(loss_rows, lengths, loss_type, max_completion_length) -> float:
    real_rows = [row[:row_length] for row, row_length in zip(loss_rows, lengths)]
    if loss_type == "token_mean":
        return sum(sum(row) for row in real_rows) / sum(len(row) for row in real_rows)
    if loss_type == "sequence_mean":
        return sum(sum(row) / len(row) for row in real_rows) / len(real_rows)
    return sum(sum(row) for row in real_rows) / (len(real_rows) * max_completion_length)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_aggregate_loss_vs_reference(seed, loss_type):
    _, kl, mask, lengths = random_grouped_batch(seed)
    per_token_loss = kl.clone().requires_grad_(True)
    loss = aggregate_loss(scramble_padding(per_token_loss, mask, float("inf")), mask, loss_type, 10)
    expected = reference_aggregate(kl.tolist(), lengths, loss_type, 10)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert torch.isfinite(per_token_loss.grad).all()
    assert torch.equal(per_token_loss.grad[~mask.bool()], torch.zeros_like(per_token_loss.grad[~mask.bool()]))


def test_aggregations_weigh_tokens_differently():
    """One long and one short completion, loss 1 per token: token_mean weighs every token alike, sequence_mean gives
    the short completion's tokens more weight, dr_grpo divides by a constant."""
    per_token_loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert aggregate_loss(per_token_loss, mask, "token_mean").item() == pytest.approx(7 / 5)
    assert aggregate_loss(per_token_loss, mask, "sequence_mean").item() == pytest.approx((1 + 3) / 2)
    assert aggregate_loss(per_token_loss, mask, "dr_grpo", max_completion_length=8).item() == pytest.approx(7 / 16)


def test_aggregate_loss_bad_arguments():
    per_token_loss, mask = torch.ones(2, 4), torch.ones(2, 4)
    with pytest.raises(ValueError, match="Unknown loss_type 'bnpo'; choose one of token_mean"):
        aggregate_loss(per_token_loss, mask, "bnpo")
    with pytest.raises(ValueError, match="dr_grpo needs max_completion_length"):
        aggregate_loss(per_token_loss, mask, "dr_grpo")
    with pytest.raises(ValueError, match="4 real tokens, more than max_completion_length = 3"):
        aggregate_loss(per_token_loss, mask, "dr_grpo", max_completion_length=3)
    with pytest.raises(ValueError, match="Shape mismatch"):
        aggregate_loss(per_token_loss, mask[:, :3], "token_mean")


# ----------------------------------------------------------------------------------------------------------------
# Group batch sizes
# ----------------------------------------------------------------------------------------------------------------


def test_group_batch_sizes_derived():
    sizes = group_batch_sizes(per_device_prompt_batch_size=4, num_generations=8, num_processes=2, num_mini_batches=2)
    assert sizes.per_device_rollout_batch_size == 32
    assert sizes.global_prompt_batch_size == 8
    assert sizes.global_rollout_batch_size == 64
    assert sizes.per_device_mini_batch_size == 16
    assert sizes.prompts_per_mini_batch == 2
    # Mini-batches of whole groups: rows [m * 16, (m + 1) * 16) start on a group boundary.
    assert sizes.per_device_mini_batch_size % sizes.num_generations == 0


def test_group_batch_sizes_refuse_to_split_a_group_and_say_what_to_change():
    # 6 prompts x 4 completions = 24 rows would split into 4 mini-batches of 6 rows: groups cut apart.
    with pytest.raises(ValueError) as error:
        group_batch_sizes(per_device_prompt_batch_size=6, num_generations=4, num_mini_batches=4)
    message = str(error.value)
    assert "per_device_prompt_batch_size = 6" in message and "num_mini_batches = 4" in message
    assert "one of 1, 2, 3, 6" in message and "multiple of 4 (e.g. 8)" in message


def test_group_batch_sizes_check_the_estimator_and_positive_integers():
    with pytest.raises(ValueError, match="rloo advantage estimator .* set num_generations to 2 or more"):
        group_batch_sizes(4, 1, estimator="rloo")
    assert group_batch_sizes(4, 1, estimator="reinforce_pp").per_device_rollout_batch_size == 4
    with pytest.raises(ValueError, match="Unknown advantage estimator"):
        group_batch_sizes(4, 2, estimator="ppo")
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_processes must be a positive integer"):
            group_batch_sizes(4, 2, num_processes=bad)


# ----------------------------------------------------------------------------------------------------------------
# The TRL reference harness (benchmarks/trl_reference): its command line, without training anything
# ----------------------------------------------------------------------------------------------------------------


def load_reference_harness():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "trl_reference" / "run_trl_reference.py"
    spec = importlib.util.spec_from_file_location("run_trl_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_harness_help(capsys):
    harness = load_reference_harness()
    with pytest.raises(SystemExit) as exit_info:
        harness.main(["--help"])
    assert exit_info.value.code == 0
    assert "--num-samples" in capsys.readouterr().out


def test_reference_harness_bad_input_is_one_line_exit_2(tmp_path, capsys):
    harness = load_reference_harness()
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    common = ["--sft-model", str(model), "--reward-model", str(model), "--output-dir", str(tmp_path / "out")]
    cases = [
        (["--trainer", "grpo", *common[:1], str(tmp_path / "missing"), *common[2:]], "--sft-model .*no config.json"),
        (["--trainer", "grpo", *common, "--num-generations", "1"], "--num-generations 1"),
        (["--trainer", "rloo", *common, "--loss-type", "dr_grpo"], "GRPO options"),
        (["--trainer", "grpo", *common, "--num-samples", "0"], "--num-samples must be >= 1"),
    ]
    for argv, message in cases:
        assert harness.main(argv) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1
        assert re.search(message, error)
    assert not (tmp_path / "out").exists()  # nothing loaded or written before the input was checked
