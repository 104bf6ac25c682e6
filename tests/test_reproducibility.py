"""A step run twice with the same seed writes the same weights: the seed is set before the models load, so even a
freshly initialised head (the reward model's score head on a base LM) starts from the same draw."""

from __future__ import annotations

import subprocess
import sys

import pytest
from safetensors.torch import load_file


def run_reward_step(output, base_dir, seed: int) -> dict:
    arguments = ["--model_name_or_path", str(base_dir), "--datasets", "tiny-sort", "--output_dir", str(output)]
    arguments += ["--max_steps", "2", "--per_device_train_batch_size", "8", "--report_to", "none", "--bf16", "false"]
    arguments += ["--save_strategy", "no", "--plots", "false", "--num_threads", "1", "--seed", str(seed)]
    # A fresh process per run, as a user starts the step: nothing seeded by an earlier run in the same process.
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_trl.scripts.reward", *arguments], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return load_file(output / "model.safetensors")


@pytest.mark.slow
def test_reward_step_is_bit_identical_for_one_seed_and_differs_for_another(tmp_path, tiny_base_dir):
    first = run_reward_step(tmp_path / "first", tiny_base_dir, seed=42)
    second = run_reward_step(tmp_path / "second", tiny_base_dir, seed=42)
    other = run_reward_step(tmp_path / "other", tiny_base_dir, seed=7)
    score_head = next(name for name in first if name.startswith("score."))
    assert first.keys() == second.keys()
    assert all(first[name].equal(second[name]) for name in first)
    assert not first[score_head].equal(other[score_head])  # the seed really decides the head's start
