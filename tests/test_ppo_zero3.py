"""PPO under DeepSpeed ZeRO-3 on CPU through `accelerate launch`: partitioned actor, reference and reward model,
generation with gathered weights, evaluation, an atomic checkpoint and a full saved actor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("packing", [[], ["--max_tokens_per_micro_batch", "64"]], ids=["padded", "packed"])
def test_ppo_under_zero3_saves_a_trained_full_actor(tmp_path, tiny_base_dir, tiny_reward_dir, packing):
    """Padded, and packed without pad tokens (several forwards of the partitioned models before each backward)."""
    output = tmp_path / "ppo"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "accelerate_configs/zero3_cpu.yaml"),
        "-m",
        "rlhf_trl.scripts.ppo",
        "--config",
        str(ROOT / "recipes/tiny/ppo.yaml"),
        "--model_name_or_path",
        str(tiny_base_dir),
        "--reward_model_path",
        str(tiny_reward_dir),
        "--output_dir",
        str(output),
        "--max_steps",
        "2",
        "--eval_steps",
        "1",
        "--save_steps",
        "1",
        "--per_device_train_batch_size",
        "16",
        "--learning_rate",
        "1e-3",
        "--plots",
        "false",
        *packing,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DeepSpeed ZeRO-3" in result.stderr + result.stdout
    assert (output / "checkpoint-1" / "ppo_state.json").exists()

    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(output).state_dict()
    start = AutoModelForCausalLM.from_pretrained(tiny_base_dir).state_dict()
    assert all(trained[name].shape == tensor.shape for name, tensor in start.items()), "gathered, not partitions"
    assert any(not torch.equal(trained[name], tensor) for name, tensor in start.items()), "the actor never changed"
