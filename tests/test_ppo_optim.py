"""optim picks PPO's optimizer as in Trainer; biases and norm weights get no weight decay; actor and critic keep
their own learning rates and schedules."""

from __future__ import annotations

import pytest
import torch
from ppo_helpers import build, config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_trl.ppo.modeling import PolicyAndValueWrapper
from rlhf_trl.ppo.optim import build_optimizer_and_scheduler


def wrapper(base_dir, reward_dir):
    return PolicyAndValueWrapper(
        AutoModelForCausalLM.from_pretrained(base_dir),
        AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1),
    )


def test_adafactor_run_uses_adafactor_and_trains(tmp_path, tiny_base_dir, tiny_reward_dir):
    from transformers.optimization import Adafactor

    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, optim="adafactor", max_steps=1)
    assert isinstance(trainer.optimizer.optimizer, Adafactor)
    before = [parameter.detach().clone() for parameter in trainer.policy.parameters()]
    trainer.train()
    assert any(not torch.equal(old, new) for old, new in zip(before, trainer.policy.parameters()))


@pytest.mark.parametrize(
    "optim, module, name",
    [
        ("adamw_torch", "torch.optim.adamw", "AdamW"),
        ("adamw_torch_fused", "torch.optim.adamw", "AdamW"),
        ("adafactor", "transformers.optimization", "Adafactor"),
        ("adamw_bnb_8bit", "bitsandbytes.optim.adamw", "AdamW"),
        ("paged_adamw_8bit", "bitsandbytes.optim.adamw", "AdamW"),
        ("paged_adamw_32bit", "bitsandbytes.optim.adamw", "AdamW"),
    ],
)
def test_each_optim_builds_its_class_and_steps(tmp_path, tiny_base_dir, tiny_reward_dir, optim, module, name):
    model = wrapper(tiny_base_dir, tiny_reward_dir)
    args = config(tmp_path, optim=optim, learning_rate=1e-2, critic_learning_rate=1e-2)
    optimizer, scheduler = build_optimizer_and_scheduler(model, args, ppo_steps=2)
    assert (type(optimizer).__module__, type(optimizer).__name__) == (module, name)
    if optim == "adamw_torch_fused":
        assert optimizer.defaults["fused"]
    before = [parameter.detach().clone() for parameter in model.parameters()]
    ids = torch.randint(0, model.policy.config.vocab_size, (2, 6))
    logits, values = model(ids, torch.ones_like(ids), None)
    (logits.float().mean() + values.float().mean()).backward()
    optimizer.step()
    scheduler.step()
    changed = [not torch.equal(old, new) for old, new in zip(before, model.parameters())]
    assert sum(changed) > len(changed) // 2


def test_no_weight_decay_on_biases_and_norms_and_separate_learning_rates(tmp_path, tiny_base_dir, tiny_reward_dir):
    model = wrapper(tiny_base_dir, tiny_reward_dir)
    args = config(tmp_path, weight_decay=0.1, learning_rate=1e-3, critic_learning_rate=5e-4)
    optimizer, _ = build_optimizer_and_scheduler(model, args, ppo_steps=2)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert list(groups) == ["actor", "actor_no_decay", "critic", "critic_no_decay"]
    for role, module in (("actor", model.policy), ("critic", model.critic)):
        names = {id(parameter): name for name, parameter in module.named_parameters()}
        # A naive reading of the names: OPT's norms are *layer_norm*, everything else with 'bias' is a bias.
        no_decay = {name for name in names.values() if name.endswith("bias") or "layer_norm" in name}
        assert {names[id(p)] for p in groups[f"{role}_no_decay"]["params"]} == no_decay
        assert {names[id(p)] for p in groups[role]["params"]} == set(names.values()) - no_decay
        assert groups[role]["weight_decay"] == 0.1 and groups[f"{role}_no_decay"]["weight_decay"] == 0.0
    assert groups["actor"]["lr"] == groups["actor_no_decay"]["lr"] == 1e-3
    assert groups["critic"]["lr"] == groups["critic_no_decay"]["lr"] == 5e-4


def test_actor_and_critic_schedules_apply_to_both_their_groups(tmp_path, tiny_base_dir, tiny_reward_dir):
    model = wrapper(tiny_base_dir, tiny_reward_dir)
    args = config(
        tmp_path,
        weight_decay=0.1,
        learning_rate=1e-3,
        critic_learning_rate=5e-4,
        lr_scheduler_type="linear",
        critic_lr_scheduler_type="constant",
        num_mini_batches=1,
    )
    optimizer, scheduler = build_optimizer_and_scheduler(model, args, ppo_steps=4)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates["actor"] == rates["actor_no_decay"] == pytest.approx(1e-3 * (1 - 2 / 4))
    assert rates["critic"] == rates["critic_no_decay"] == pytest.approx(5e-4)


def test_logged_learning_rates_are_the_actor_and_critic_rates(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(
        tmp_path, tiny_base_dir, tiny_reward_dir, max_steps=1, learning_rate=2e-3, critic_learning_rate=7e-4
    )
    metrics = trainer.train()
    assert metrics["lr/actor"] == pytest.approx(2e-3) and metrics["lr/critic"] == pytest.approx(7e-4)
