"""Critic-free advantage estimators in the real trainer on the tiny models: each trains, nothing critic-shaped is
built or saved, groups of num_generations completions are adjacent and intact on each process, the step script
loads no critic, and ``rlhf-trl e2e --algorithm`` picks the estimator's recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from ppo_helpers import build, config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf_trl.ppo.config import PPOConfig
from rlhf_trl.ppo.estimators import ADVANTAGE_ESTIMATORS, ESTIMATORS_NEEDING_CRITIC
from rlhf_trl.ppo.experience import PromptSampler
from rlhf_trl.ppo.trainer import PPOTrainer
from rlhf_trl.tiny.chat_model import conversational_records

CRITIC_FREE = [name for name in ADVANTAGE_ESTIMATORS if name not in ESTIMATORS_NEEDING_CRITIC]
GROUP_SIZE = 4


def estimator_settings(estimator: str) -> dict:
    settings = {"advantage_estimator": estimator, "num_generations": GROUP_SIZE, "per_device_train_batch_size": 4}
    if estimator == "dr_grpo":
        settings["loss_type"] = "dr_grpo"
    return settings


def actor_parameters(trainer) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in trainer.policy.parameters()]


@pytest.mark.parametrize("estimator", CRITIC_FREE)
def test_each_critic_free_estimator_trains_without_a_critic(estimator, tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, max_steps=2, **estimator_settings(estimator))
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    assert wrapper.critic is None
    names = [name for name, _ in wrapper.named_parameters()]
    assert names and all(name.startswith("policy.") for name in names)
    assert {group["name"].split("_")[0] for group in trainer.optimizer.param_groups} == {"actor"}
    before = actor_parameters(trainer)
    metrics = trainer.train()
    after = actor_parameters(trainer)
    assert any(not torch.equal(old, new) for old, new in zip(before, after)), "the actor did not change"
    assert not any(key.startswith("value/") for record in trainer.log_history for key in record)
    assert "lr/critic" not in metrics
    assert metrics["memory/peak_rss_mib"] > 0 and metrics["time/step_s"] > 0
    assert metrics["episodes"] == 2 * 4 * GROUP_SIZE  # two steps of 4 prompts x 4 completions
    trainer.save_model()
    output = Path(trainer.args.output_dir)
    assert (output / "model.safetensors").exists()
    assert not (output / "critic").exists()
    AutoModelForCausalLM.from_pretrained(output)


def test_gae_still_builds_trains_and_saves_its_critic(tmp_path, tiny_base_dir, tiny_reward_dir):
    """Control for the test above: the same checks see a critic when there is one."""
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, max_steps=1)
    assert trainer.accelerator.unwrap_model(trainer.model).critic is not None
    metrics = trainer.train()
    assert "value/loss" in metrics and "lr/critic" in metrics
    trainer.save_model()
    assert (Path(trainer.args.output_dir) / "critic" / "config.json").exists()


def test_a_critic_for_a_critic_free_estimator_is_refused_and_gae_needs_one(tmp_path, tiny_base_dir, tiny_reward_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    common = dict(
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(tiny_base_dir),
        reward_model=AutoModelForSequenceClassification.from_pretrained(tiny_reward_dir, num_labels=1),
        train_dataset=Dataset.from_list([{"prompt": "sort 3 1 2"}] * 16),
    )
    critic = AutoModelForSequenceClassification.from_pretrained(tiny_reward_dir, num_labels=1)
    with pytest.raises(ValueError, match="uses no critic"):
        PPOTrainer(args=config(tmp_path, **estimator_settings("grpo")), value_model=critic, **common)
    with pytest.raises(ValueError, match="needs a critic"):
        PPOTrainer(args=config(tmp_path), value_model=None, **common)


@pytest.mark.parametrize("process_index", [0, 1])
def test_groups_are_adjacent_and_intact_on_each_process(process_index, tmp_path, tiny_base_dir, tiny_reward_dir):
    """Each process repeats each of its own prompts num_generations times in adjacent rows, so a group never spans
    two processes; the rollout, its scores and its advantages keep that layout."""
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, **estimator_settings("grpo"))
    prompt_count = len(trainer.train_prompts)
    # This process as one of two: the sampler hands it its own share of each global batch of prompts.
    trainer.sampler = PromptSampler(prompt_count, 4, process_index, 2, seed=0)
    own = PromptSampler(prompt_count, 4, process_index, 2, seed=0).next_indices()
    other = PromptSampler(prompt_count, 4, 1 - process_index, 2, seed=0).next_indices()
    assert not set(own) & set(other)
    rollout = trainer.generate(trainer.next_batch())
    expected = [trainer.train_prompts.prompts[index] for index in own for _ in range(GROUP_SIZE)]
    assert rollout.prompts == expected
    assert len(rollout) == trainer.args.local_rollout_batch_size == 4 * GROUP_SIZE
    for group in range(4):
        rows = slice(group * GROUP_SIZE, (group + 1) * GROUP_SIZE)
        assert torch.equal(rollout.prompt_ids[rows], rollout.prompt_ids[rows.start].expand(GROUP_SIZE, -1))
    trainer.score(rollout)
    trainer.compute_advantages(rollout)
    # GRPO's advantages sum to zero within each group (one value per completion, repeated over its tokens).
    per_completion = rollout.advantages[:, 0].view(4, GROUP_SIZE)
    assert per_completion.sum(dim=1).abs().max() < 1e-4
    assert rollout.values is None and rollout.returns is None


def test_batch_sizes_count_completions_and_are_derived_once():
    args = PPOConfig(
        output_dir="unused",
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=8,
        generation_batches=2,
        num_generations=4,
        num_mini_batches=4,
        gradient_accumulation_steps=2,
        advantage_estimator="rloo",
    )
    assert args.local_rollout_prompts == 16
    assert args.local_rollout_batch_size == 64
    assert args.local_mini_batch_size == 16 and args.micro_batch_size == 8
    assert args.group_batch_sizes.prompts_per_mini_batch == 4
    assert args.kl_in_reward is True  # rloo takes the KL in the reward by default
    grpo = PPOConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none", **estimator_settings("grpo"))
    assert grpo.kl_in_reward is False  # grpo takes it in the loss


def test_grpo_trains_the_tiny_chat_model_on_conversations(tmp_path, tiny_chat_dir, tiny_chat_reward_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_dir)
    args = config(tmp_path, max_steps=2, max_prompt_length=48, **estimator_settings("grpo"))
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(tiny_chat_dir),
        value_model=None,
        reward_model=AutoModelForSequenceClassification.from_pretrained(tiny_chat_reward_dir, num_labels=1),
        reward_processing_class=AutoTokenizer.from_pretrained(tiny_chat_reward_dir),
        train_dataset=Dataset.from_list(conversational_records("ppo", 16)),
    )
    before = actor_parameters(trainer)
    rollout = trainer.generate(trainer.next_batch())
    assert isinstance(rollout.prompts[0], list)  # conversational prompts, in groups
    assert all(rollout.prompts[row] == rollout.prompts[row - row % GROUP_SIZE] for row in range(len(rollout)))
    trainer.train()
    assert any(not torch.equal(old, new) for old, new in zip(before, actor_parameters(trainer)))
    trainer.save_model()
    assert not (tmp_path / "ppo" / "critic").exists()


def test_step_script_loads_no_critic_and_reports_memory_and_step_time(
    tmp_path, tiny_base_dir, tiny_reward_dir, monkeypatch
):
    from rlhf_trl.scripts import ppo

    loaded = []
    real_load = ppo.load_pretrained

    def recording_load(model_class, path, what, **kwargs):
        loaded.append(what)
        return real_load(model_class, path, what, **kwargs)

    monkeypatch.setattr(ppo, "load_pretrained", recording_load)
    output = tmp_path / "grpo"
    code = ppo.cli(
        [
            "--model_name_or_path", str(tiny_base_dir),
            "--reward_model_path", str(tiny_reward_dir),
            "--datasets", "tiny-sort",
            "--max_train_samples", "64",
            "--output_dir", str(output),
            "--advantage_estimator", "grpo",
            "--num_generations", "4",
            "--per_device_train_batch_size", "4",
            "--max_steps", "2",
            "--max_new_tokens", "6",
            "--max_prompt_length", "16",
            "--use_cpu", "true",
            "--bf16", "false",
            "--report_to", "none",
            "--save_strategy", "no",
        ]
    )  # fmt: skip
    assert code == 0
    assert "value model" not in loaded and "reward model" in loaded
    assert not (output / "critic").exists()
    info = json.loads((output / "run_info.json").read_text())
    assert info["final_metrics"]["memory/peak_rss_mib"] > 0
    assert info["final_metrics"]["time/mean_step_s"] > 0


def test_e2e_algorithm_picks_the_estimator_recipe_or_adds_the_flag(tmp_path):
    from rlhf_trl.scripts import e2e

    recipe = e2e.recipe_dir("tiny")
    for name in ADVANTAGE_ESTIMATORS:
        args = e2e.parse_arguments(["--algorithm", name, "--output-dir", str(tmp_path)])
        arguments = e2e.step_arguments(3, args, recipe, tmp_path)
        config_file = Path(arguments[arguments.index("--config") + 1])
        if (recipe / f"{name}.yaml").exists():
            assert config_file == recipe / f"{name}.yaml"
            assert "--advantage_estimator" not in arguments
        else:
            assert config_file == recipe / "ppo.yaml"
            assert arguments[arguments.index("--advantage_estimator") + 1] == name
        pipeline = arguments[arguments.index("--pipeline_configs") + 1 :][:3]
        assert pipeline[2] == str(config_file)
    assert (recipe / "grpo.yaml").exists()
    plain = e2e.step_arguments(3, e2e.parse_arguments(["--output-dir", str(tmp_path)]), recipe, tmp_path)
    assert Path(plain[plain.index("--config") + 1]) == recipe / "ppo.yaml" and "--advantage_estimator" not in plain
