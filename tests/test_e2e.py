"""The whole pipeline on the embedded tiny task, as a user runs it: `rlhf-trl e2e` launching every step through
`accelerate launch` with DeepSpeed ZeRO-2 on CPU (one process), and the quality bar of the tiny default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_tiny_e2e_with_zero2_meets_the_quality_bar(tmp_path):
    output = tmp_path / "run"
    environment = {**os.environ, "RLHF_TRL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf_trl.cli",
            "e2e",
            "--recipe",
            "tiny",
            "--deployment-type",
            "cpu",
            "--actor-zero-stage",
            "2",
            "--reward-zero-stage",
            "2",
            "--output-dir",
            str(output),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in (1, 2, 3):
        assert "zero2_cpu.yaml" in (output / f"step{step}.log").read_text().splitlines()[0]
    assert "DeepSpeed ZeRO-2" in (output / "step3.log").read_text()

    summary = json.loads((output / "e2e_summary.json").read_text())
    gold = summary["gold_score"]
    reward_info = json.loads((output / "step2_reward" / "run_info.json").read_text())
    # SFT learns the task; the reward model ranks held-out pairs well; PPO fixes what the demonstrations got wrong.
    assert gold["sft"] > gold["base"] + 0.3, gold
    assert reward_info["final_metrics"]["eval_pair_accuracy"] >= 0.8
    # Measured on the 1000 held-out prompts (2026-12-01, Intel Xeon AVX-512): +0.107 (this launch, seed 42), and
    # +0.066 to +0.111 over seeds 42, 7, 1 without DeepSpeed (BENCHMARKS.md); the bar is half the worst, rounded down.
    assert gold["ppo"] > gold["sft"] + 0.03, gold
    assert "held-out gold score" in result.stdout
    assert "sample conversations" in result.stdout

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    AutoModelForCausalLM.from_pretrained(output / "step3_ppo")
    AutoModelForSequenceClassification.from_pretrained(output / "step2_reward")
    assert (output / "report.html").stat().st_size > 10_000
    assert list((output / "step3_ppo" / "plots").glob("*.png"))
