"""Quick low-memory runs: the three *-8bit-lora.yaml recipes on the tiny model, base weights in 8-bit
(bitsandbytes on CPU), LoRA adapters trained, each step feeding the next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_step(step, output, *extra):
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        f"rlhf_trl.scripts.{step}",
        "--config",
        str(ROOT / f"recipes/tiny/{step}-8bit-lora.yaml"),
        "--output_dir",
        str(output),
        "--plots",
        "false",
        *extra,
    ]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output / "run_info.json").read_text())


@pytest.mark.slow
def test_three_steps_in_8bit_with_lora(tmp_path, tiny_base_dir):
    sft = run_step("sft", tmp_path / "sft", "--model_name_or_path", str(tiny_base_dir), "--max_steps", "20")
    reward = run_step(
        "reward", tmp_path / "reward", "--model_name_or_path", str(tmp_path / "sft"), "--max_steps", "20"
    )
    ppo = run_step(
        "ppo",
        tmp_path / "ppo",
        "--model_name_or_path",
        str(tmp_path / "sft"),
        "--reward_model_path",
        str(tmp_path / "reward"),
        "--max_steps",
        "2",
        "--eval_steps",
        "0",
    )
    for info, folder in ((sft, "sft"), (reward, "reward"), (ppo, "ppo")):
        assert info["lora"] and info["quantization"] == "8-bit", folder
        assert (tmp_path / folder / "adapter_config.json").exists(), "a LoRA run saves its adapter"
        assert not (tmp_path / folder / "model.safetensors").exists(), "no full copy of the weights"
    assert json.loads((tmp_path / "reward" / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    assert (tmp_path / "ppo" / "critic" / "adapter_config.json").exists(), "the critic trains through LoRA too"

    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file

    adapter = load_file(tmp_path / "ppo" / "adapter_model.safetensors")
    assert any(torch.count_nonzero(tensor) for name, tensor in adapter.items() if "lora_B" in name), (
        "PPO must have trained the LoRA B matrices (they start at zero)"
    )
    AutoPeftModelForCausalLM.from_pretrained(tmp_path / "ppo")
