"""Guards: padding never leaks inf/NaN into the PPO maths, invalid rewards are errors (or dropped and counted),
exploding SFT/reward losses stop the run without saving the diverged model, guard decisions are agreed across
processes, and an unusable RNG state on resume is a warning."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from ppo_helpers import config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerControl

from rlhf_trl.guards import (
    DivergenceCallback,
    InvalidRewardError,
    TrainingDivergedError,
    agree_any,
    warn_if_rng_state_unusable,
)
from rlhf_trl.ppo import losses
from rlhf_trl.ppo.advantages import gae_advantages, shaped_rewards
from rlhf_trl.ppo.masks import masked_mean, masked_whiten
from rlhf_trl.ppo.trainer import PPOTrainer
from rlhf_trl.reward.sources import CombinedReward, first_invalid_score
from rlhf_trl.tiny.task import gold_scores, make_records

REPO = Path(__file__).resolve().parents[1]
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # right-padded: row 0 has 3 real tokens, row 1 has 2


def with_padding(clean: torch.Tensor, value: float) -> torch.Tensor:
    return torch.where(MASK.bool(), clean, torch.full_like(clean, value))


# ---------------------------------------------------------------------------------------------------- padding maths
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_gae_ignores_inf_and_nan_at_padding(bad):
    generator = torch.Generator().manual_seed(0)
    values, rewards = torch.randn(2, 4, generator=generator), torch.randn(2, 4, generator=generator)
    clean = gae_advantages(values, rewards, MASK, gamma=1.0, lam=0.95)
    dirty = gae_advantages(with_padding(values, bad), with_padding(rewards, bad), MASK, gamma=1.0, lam=0.95)
    for clean_part, dirty_part in zip(clean, dirty):
        assert torch.isfinite(dirty_part).all()
        assert torch.equal(clean_part, dirty_part)
    whitened = masked_whiten(with_padding(clean[0], bad), MASK)
    assert torch.isfinite(whitened).all() and torch.equal(whitened, masked_whiten(clean[0], MASK))


@pytest.mark.parametrize("bad", [math.inf, 200.0, math.nan])
def test_policy_value_and_kl_losses_and_gradients_ignore_padding(bad):
    """A huge log-prob at a padded position (exp overflows to inf) must change neither losses nor gradients."""
    generator = torch.Generator().manual_seed(1)
    old_logprobs = -torch.rand(2, 4, generator=generator)
    ref_logprobs = -torch.rand(2, 4, generator=generator)
    advantages, returns = torch.randn(2, 4, generator=generator), torch.randn(2, 4, generator=generator)
    old_values = torch.randn(2, 4, generator=generator)

    def run(fill):
        logprobs = (old_logprobs + 0.1 * torch.randn(2, 4, generator=torch.Generator().manual_seed(2))).clone()
        values = (old_values + 0.3).clone()
        logprobs = with_padding(logprobs, fill).requires_grad_(True)
        values = with_padding(values, fill).requires_grad_(True)
        policy, policy_stats = losses.policy_loss(logprobs, old_logprobs, with_padding(advantages, fill), MASK, 0.2)
        value, _ = losses.value_loss(values, old_values, with_padding(returns, fill), MASK, 0.2)
        kl = losses.kl_loss(logprobs, with_padding(ref_logprobs, -fill), MASK, "k3")
        (policy + value + kl).backward()
        return [policy, value, kl, policy_stats["approx_kl"], logprobs.grad, values.grad]

    clean, dirty = run(0.0), run(bad)
    for clean_part, dirty_part in zip(clean, dirty):
        assert torch.isfinite(dirty_part).all()
        assert torch.allclose(clean_part, dirty_part, atol=0, rtol=1e-6)


def test_shaped_rewards_and_means_ignore_padding():
    scores, kl = torch.tensor([1.0, -2.0]), torch.rand(2, 4, generator=torch.Generator().manual_seed(3))
    clean = shaped_rewards(scores, kl, MASK, 0.1)
    dirty = shaped_rewards(scores, with_padding(kl, math.nan), MASK, 0.1)
    assert torch.equal(clean, dirty)
    assert masked_mean(with_padding(kl, math.inf), MASK) == masked_mean(kl, MASK)


# ---------------------------------------------------------------------------------------------------- reward checks
def test_nan_and_inf_rewards_are_kept_and_described_none_counts_as_zero():
    def fine(prompts, completions, **_):
        return [1.0, None, 2.0]

    def broken(prompts, completions, **_):
        return [0.5, math.inf, math.nan]

    total, parts = CombinedReward([fine, broken], [1.0, 2.0])(["p0", "p1", "p2"], ["a", "b", "c"])
    assert total[0] == 2.0 and math.isinf(total[1]) and math.isnan(total[2])
    assert parts["fine"][0] == 1.0 and math.isnan(parts["fine"][1]), "None shows as NaN in its part only"
    message = first_invalid_score(total, parts, ["p0", "p1", "p2"])
    assert message == "reward source broken returned inf for sample 1 (prompt 'p1') and 1 more sample(s)"
    fine_only, fine_parts = CombinedReward([fine])(["p0", "p1", "p2"], ["a", "b", "c"])
    assert fine_only.tolist() == [1.0, 0.0, 2.0] and first_invalid_score(fine_only, fine_parts, ["p0"] * 3) is None


def nan_on_one_sample(prompts, completions, **_):
    """A reward function with a bug: NaN for the third sample it sees."""
    return [math.nan if index == 2 else 1.0 for index in range(len(prompts))]


def answer_length(prompts, completions, **_):
    """A format-free reward (the chat template's markers are not the tiny task's text prompts)."""
    return [float(len(completion)) for completion in completions]


def gold_with_inf(prompts, completions, **_):
    return [math.inf] + [0.0] * (len(prompts) - 1)


def build_trainer(tmp_path, actor_dir, reward_dir, records, reward_funcs, gold_funcs=None, **overrides):
    overrides.setdefault("max_prompt_length", 64)  # whole chat-template prompts
    return PPOTrainer(
        args=config(tmp_path, **overrides),
        processing_class=AutoTokenizer.from_pretrained(actor_dir),
        model=AutoModelForCausalLM.from_pretrained(actor_dir),
        value_model=AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1),
        reward_funcs=reward_funcs,
        gold_funcs=gold_funcs,
        train_dataset=Dataset.from_list(records),
    )


@pytest.fixture(params=["opt", "llama-chat"])
def models_and_prompts(request):
    """(actor folder, critic folder, prompt records): the tiny OPT with text prompts, and the tiny Llama-style chat
    model with conversational prompts."""
    if request.param == "opt":
        return (
            request.getfixturevalue("tiny_base_dir"),
            request.getfixturevalue("tiny_reward_dir"),
            make_records("ppo", 16),
        )
    from rlhf_trl.tiny.chat_model import conversational_records

    return (
        request.getfixturevalue("tiny_chat_dir"),
        request.getfixturevalue("tiny_chat_reward_dir"),
        conversational_records("ppo", 16),
    )


def test_nan_reward_is_an_error_naming_the_function_and_sample(tmp_path, models_and_prompts):
    actor_dir, reward_dir, records = models_and_prompts
    trainer = build_trainer(tmp_path, actor_dir, reward_dir, records, [nan_on_one_sample], max_steps=1)
    before = [parameter.detach().clone() for parameter in trainer.policy.parameters()]
    with pytest.raises(InvalidRewardError, match=r"nan_on_one_sample returned nan for sample 2 \(prompt"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters())), "no update after the error"


def test_invalid_gold_score_is_an_error_too(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build_trainer(
        tmp_path, tiny_base_dir, tiny_reward_dir, make_records("ppo", 16), [gold_scores], [gold_with_inf], max_steps=1
    )
    with pytest.raises(InvalidRewardError, match="gold_with_inf returned inf for sample 0"):
        trainer.train()


def test_dropped_invalid_rewards_are_left_out_and_counted(tmp_path, models_and_prompts):
    actor_dir, reward_dir, records = models_and_prompts
    trainer = build_trainer(
        tmp_path,
        actor_dir,
        reward_dir,
        records,
        [nan_on_one_sample],
        [gold_with_inf],
        max_steps=1,
        drop_invalid_rewards=True,
        whiten_advantages=True,
    )
    before = [parameter.detach().clone() for parameter in trainer.policy.parameters()]
    metrics = trainer.train()
    assert metrics["reward/invalid_samples"] == 1.0
    assert math.isfinite(metrics["objective/score"]) and math.isfinite(metrics["objective/gold_score"])
    assert all(math.isfinite(value) for value in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters())), "the rest still trains"
    logged = json.loads((tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["reward/invalid_samples"] == 1.0


def test_chat_model_ratio_guard_skips_then_stops(tmp_path, tiny_chat_dir, tiny_chat_reward_dir):
    from rlhf_trl.tiny.chat_model import conversational_records

    trainer = build_trainer(
        tmp_path,
        tiny_chat_dir,
        tiny_chat_reward_dir,
        conversational_records("ppo", 16),
        [answer_length],
        max_steps=3,
        max_consecutive_skips=2,
    )
    trainer.args.ratio_threshold = 0.5  # refused by PPOConfig; set here so every micro-batch counts as a blow-up
    before = [parameter.detach().clone() for parameter in trainer.policy.parameters()]
    with pytest.raises(TrainingDivergedError, match="2 micro-batches in a row blew up"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters())), (
        "skipped updates changed weights"
    )


# ---------------------------------------------------------------------------------------------------- SFT / reward
def test_divergence_callback_decisions():
    callback, control, state = DivergenceCallback(10.0), TrainerControl(), type("State", (), {"global_step": 5})()
    callback.on_log(None, state, control, logs={"loss": 2.0})
    callback.on_log(None, state, control, logs={"loss": 19.0})
    assert callback.message is None and not control.should_training_stop
    control.should_save = True
    callback.on_log(None, state, control, logs={"loss": 4e8})
    assert control.should_training_stop and not control.should_save
    assert "4e+08" in callback.message and "step 5" in callback.message
    with pytest.raises(TrainingDivergedError):
        callback.raise_if_diverged()
    nan_callback, control = DivergenceCallback(None), TrainerControl()
    nan_callback.on_log(None, state, control, logs={"loss": 1e12})
    assert nan_callback.message is None, "factor None: only NaN/inf stop"
    nan_callback.on_log(None, state, control, logs={"loss": math.nan})
    assert control.should_training_stop and "nan" in nan_callback.message


@pytest.mark.parametrize("step", ["sft", "reward"])
def test_exploding_learning_rate_exits_2_without_saving_the_model(step, tmp_path, tiny_base_dir, capsys):
    from rlhf_trl.scripts import reward, sft

    output = tmp_path / "out"
    argv = [
        "--config", str(REPO / "recipes" / "tiny" / f"{step}.yaml"),
        "--model_name_or_path", str(tiny_base_dir),
        "--output_dir", str(output),
        "--learning_rate", "1000",
        "--max_steps", "6",
        "--max_train_samples", "256",
        "--per_device_train_batch_size", "8",
        "--logging_steps", "1",
        "--save_strategy", "steps",
        "--save_steps", "1",
        "--eval_split_ratio", "0",
        "--use_cpu",
        "--gold_scorer", "",
    ]  # fmt: skip
    code = {"sft": sft, "reward": reward}[step].cli(argv)
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert any(text in errors[0] for text in ("times its first-step value", "loss is nan", "gradient norm is"))
    assert not (output / "model.safetensors").exists() and not (output / "run_info.json").exists()
    checkpoints = sorted(output.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    assert checkpoints, "the checkpoint written before the blow-up stays"
    diverged_at = int(errors[0].split("step ")[1].split(":")[0])
    assert all(int(path.name.split("-")[1]) < diverged_at for path in checkpoints), "no checkpoint of the blow-up"
    for path in checkpoints:
        assert all(torch.isfinite(tensor).all() for tensor in load_file(path / "model.safetensors").values())


# ---------------------------------------------------------------------------------------------------- resume RNG
def test_unusable_rng_state_is_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="rlhf_trl.guards")
    assert not warn_if_rng_state_unusable(tmp_path, 0)
    (tmp_path / "random_states_0.pkl").write_bytes(b"truncated")
    assert not warn_if_rng_state_unusable(tmp_path, 0)
    assert len(caplog.records) == 2 and all(record.levelno == logging.WARNING for record in caplog.records)
    assert "NOT reproducible" in caplog.records[-1].getMessage()
    caplog.clear()
    torch.save({"random_state": 1, "numpy_random_seed": 2, "torch_manual_seed": 3}, tmp_path / "random_states_0.pkl")
    assert warn_if_rng_state_unusable(tmp_path, 0) and not caplog.records


def test_resuming_with_a_damaged_rng_state_warns_and_continues(tmp_path, tiny_base_dir, tiny_reward_dir, caplog):
    from ppo_helpers import build

    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, max_steps=1)
    trainer.train()
    checkpoint = trainer.save_checkpoint()
    (checkpoint / "accelerator" / "random_states_0.pkl").write_bytes(b"damaged")
    resumed = build(tmp_path, tiny_base_dir, tiny_reward_dir, max_steps=2)
    caplog.set_level(logging.WARNING)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state["global_step"] == 2
    warnings = [record for record in caplog.records if "NOT reproducible" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


# ---------------------------------------------------------------------------------------------------- two processes
def test_agree_any_without_distributed_is_the_flag():
    assert agree_any([True, False]) == [True, False]


@pytest.mark.slow
def test_two_ranks_stop_together_when_only_one_sees_nan(tmp_path, tiny_base_dir, tiny_reward_dir):
    """Two gloo ranks: rank 1 alone gets a NaN reward, then (second scenario) a NaN loss, then a ratio blow-up. Both
    ranks must take the same decision; a rank deciding alone would hang the other, which the timeout catches."""
    report = tmp_path / "report"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "scripts" / "guards_two_ranks.py"),
        "--report", str(report), "--actor", str(tiny_base_dir), "--critic", str(tiny_reward_dir),
        "--output", str(tmp_path / "runs"),
    ]  # fmt: skip
    python_path = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": python_path}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report.{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0]["agree"] == reports[1]["agree"] == [True, False]
    for scenario in ("reward", "loss"):
        outcomes = [report[scenario] for report in reports]
        assert all(outcome["error"] == outcomes[0]["error"] for outcome in outcomes), outcomes
    assert "nan_on_rank_one returned nan" in reports[1]["reward"]["message"]
    assert "another process" in reports[0]["reward"]["message"]
    assert reports[0]["reward"]["error"] == "InvalidRewardError"
    assert reports[0]["loss"]["error"] == "TrainingDivergedError"
    assert "another process" in reports[0]["loss"]["message"] and "value loss is nan" in reports[1]["loss"]["message"]
    assert reports[0]["skip"]["skipped"] == reports[1]["skip"]["skipped"] > 0
    assert reports[0]["skip"]["weights"] == pytest.approx(reports[1]["skip"]["weights"], rel=1e-9)
