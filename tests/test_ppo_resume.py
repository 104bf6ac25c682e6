"""Crash and resume: a PPO run killed with SIGKILL between two saves resumes from its last complete checkpoint and
ends like an uninterrupted run with the same seed; no checkpoint is ever left half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


def ppo_command(output_dir, base_dir, reward_dir, *extra):
    return [
        sys.executable,
        "-m",
        "rlhf_trl.scripts.ppo",
        "--config",
        str(ROOT / "recipes/tiny/ppo.yaml"),
        "--model_name_or_path",
        str(base_dir),
        "--reward_model_path",
        str(reward_dir),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(STEPS),
        "--per_device_train_batch_size",
        "16",
        "--save_steps",
        "2",
        "--save_total_limit",
        "2",
        "--eval_steps",
        "0",
        "--logging_steps",
        "1",
        "--plots",
        "false",
        *extra,
    ]


def metrics(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_base_dir, tiny_reward_dir):
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference_dir = tmp_path / "uninterrupted"
    subprocess.run(
        ppo_command(reference_dir, tiny_base_dir, tiny_reward_dir),
        check=True,
        env=environment,
        capture_output=True,
        timeout=600,
    )

    crashed_dir = tmp_path / "crashed"
    process = subprocess.Popen(
        ppo_command(crashed_dir, tiny_base_dir, tiny_reward_dir),
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while not (crashed_dir / "checkpoint-2" / "ppo_state.json").exists():
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # between the saves of step 2 and step 4
    process.wait()
    assert not (crashed_dir / "config.json").exists(), "the run finished before it was killed"
    for folder in crashed_dir.glob("checkpoint-*"):
        assert (folder / "ppo_state.json").exists(), f"{folder} is half-written"

    resumed = subprocess.run(
        ppo_command(crashed_dir, tiny_base_dir, tiny_reward_dir, "--resume_from_checkpoint", "true"),
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = metrics(reference_dir), metrics(crashed_dir)
    assert [row["step"] for row in got] == list(range(1, STEPS + 1))
    for want, have in zip(expected, got):
        for key in ("objective/score", "objective/kl", "policy/loss", "value/loss", "response/length"):
            assert have[key] == pytest.approx(want[key], rel=1e-3, abs=1e-4), (want["step"], key)
    assert (crashed_dir / "config.json").exists()
    assert len(list(crashed_dir.glob("checkpoint-*"))) <= 2, "save_total_limit must rotate old checkpoints"
