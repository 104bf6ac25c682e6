"""Reward shaping and schedule options of PPOConfig, each checked on what it changes."""

from __future__ import annotations

import pytest
import torch
from ppo_helpers import build

from rlhf_trl.reward.sources import CombinedReward


def one_rollout(trainer):
    rollout = trainer.generate(trainer.next_batch())
    trainer.score(rollout)
    trainer.compute_advantages(rollout)
    return rollout


def test_missing_eos_penalty_lowers_only_unfinished_answers(tmp_path, tiny_base_dir, tiny_reward_dir):
    # One new token: answers that did not end with EOS get the penalty, the rest keep their score.
    trainer = build(
        tmp_path, tiny_base_dir, tiny_reward_dir, max_new_tokens=1, missing_eos_penalty=2.0, reward_clip=None
    )
    rollout = one_rollout(trainer)
    ended = (rollout.completion_ids == trainer.tokenizer.eos_token_id).any(dim=1).cpu()
    assert (~ended).any()
    expected = torch.where(ended, rollout.raw_scores, rollout.raw_scores - 2.0)
    assert torch.allclose(rollout.scores.cpu(), expected)


def test_reward_clip_bounds_scores(tmp_path, tiny_base_dir, tiny_reward_dir):
    def huge(prompts, completions, **_):
        return [100.0 * (index % 2 * 2 - 1) for index in range(len(prompts))]

    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, reward_model=False, reward_funcs=[huge], reward_clip=5.0)
    rollout = one_rollout(trainer)
    assert rollout.scores.abs().max().item() == 5.0


def test_running_score_normalization_centres_scores(tmp_path, tiny_base_dir, tiny_reward_dir):
    def offset(prompts, completions, **_):
        return [50.0 + len(text) for text in completions]

    trainer = build(
        tmp_path,
        tiny_base_dir,
        tiny_reward_dir,
        reward_model=False,
        reward_funcs=[offset],
        score_normalization="running",
        reward_clip=None,
    )
    rollout = one_rollout(trainer)
    assert rollout.raw_scores.mean().item() > 49
    assert abs(rollout.scores.mean().item()) < 1e-4
    assert trainer.score_normalizer.count == len(rollout)


def test_reference_score_normalization_is_measured_once(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, score_normalization="reference", max_steps=2)
    trainer.train()
    assert trainer.score_normalizer.frozen
    assert trainer.score_normalizer.count == 8  # one batch of reference-policy samples, never updated after


def test_kl_as_a_loss_term_keeps_it_out_of_the_reward(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, kl_in_reward=False, max_steps=2)
    metrics = trainer.train()
    assert "policy/kl_loss" in metrics
    rollout = one_rollout(trainer)
    mask = rollout.completion_mask.float()
    # Without KL in the reward, the only non-zero reward is the score at each answer's last token.
    assert torch.allclose(rollout.rewards.sum(dim=1), rollout.scores)
    assert ((rollout.rewards != 0).float() * mask).sum(dim=1).max() <= 1


def test_kl_in_the_reward_is_per_token(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, max_steps=2, learning_rate=1e-2)
    trainer.train()
    rollout = one_rollout(trainer)
    kl_part = rollout.rewards.sum(dim=1) - rollout.scores
    expected = -trainer.kl_controller.value * (rollout.kl * rollout.completion_mask).sum(dim=1)
    assert torch.allclose(kl_part, expected, atol=1e-5)
    assert kl_part.abs().sum() > 0, "after updates the actor differs from the reference"


def test_generation_batches_make_one_rollout_of_several_batches(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, generation_batches=2, max_steps=1)
    metrics = trainer.train()
    assert metrics["episodes"] == 16  # 2 generation batches of 8 prompts
    assert trainer.args.local_mini_batch_size == 8


def test_whitened_advantages_have_zero_mean_unit_variance(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, whiten_advantages=True)
    rollout = one_rollout(trainer)
    mask = rollout.completion_mask.bool()
    values = rollout.advantages[mask]
    assert values.mean().abs().item() < 1e-5
    assert values.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)


def test_weighted_reward_sources():
    def ones(prompts, completions, **_):
        return [1.0] * len(prompts)

    def maybe(prompts, completions, **_):
        return [2.0, None]

    combined = CombinedReward([ones, maybe], [0.5, 3.0])
    total, parts = combined(["a", "b"], ["x", "y"])
    assert total.tolist() == [0.5 + 6.0, 0.5]
    assert set(parts) == {"ones", "maybe"}
    with pytest.raises(ValueError, match="2 reward weights given for 1"):
        CombinedReward([ones], [1.0, 2.0])


def test_separate_actor_and_critic_learning_rates(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(
        tmp_path,
        tiny_base_dir,
        tiny_reward_dir,
        learning_rate=1e-3,
        critic_learning_rate=5e-3,
        lr_scheduler_type="linear",
        critic_lr_scheduler_type="constant",
        max_steps=2,
    )
    trainer.train()
    rates = trainer.scheduler.get_last_lr()  # groups: actor, actor_no_decay, critic, critic_no_decay
    actor_lr, critic_lr = rates[0], rates[-1]
    assert critic_lr == pytest.approx(5e-3)
    assert actor_lr < 1e-3  # linear decay, while the critic keeps a constant rate


def test_bias_corrected_kl_changes_the_gradient_not_the_loss(tmp_path, tiny_base_dir, tiny_reward_dir):
    """use_bias_correction_kl weights the KL loss by the importance ratio: on the rollout's own policy the ratio is 1,
    so the loss is the same, but its gradient (through the ratio) is not."""
    trainer = build(
        tmp_path,
        tiny_base_dir,
        tiny_reward_dir,
        advantage_estimator="grpo",
        num_generations=4,
        max_steps=3,
        kl_coef=1.0,
    )
    trainer.train()  # the actor moves away from the reference, so the KL term is not zero
    rollout = one_rollout(trainer)

    def loss_and_gradient(corrected: bool):
        trainer.args.use_bias_correction_kl = corrected
        trainer.optimizer.zero_grad()
        stats, loss, _, _ = trainer._micro_batch_loss(rollout)
        loss.backward()
        gradient = torch.cat([p.grad.flatten() for p in trainer.policy.parameters() if p.grad is not None])
        return stats["policy/kl_loss"], loss.item(), gradient.clone()

    kl_plain, loss_plain, gradient_plain = loss_and_gradient(False)
    kl_corrected, loss_corrected, gradient_corrected = loss_and_gradient(True)
    assert kl_plain > 0
    assert kl_corrected == pytest.approx(kl_plain, rel=1e-5)
    assert loss_corrected == pytest.approx(loss_plain, rel=1e-5, abs=1e-7)
    assert not torch.allclose(gradient_corrected, gradient_plain, rtol=1e-3, atol=1e-6)
