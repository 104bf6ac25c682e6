"""``rlhf-trl bench --memory-search``: the largest OPT actor whose step 3 fits on this GPU, found by a binary search
over sizes, each tried in a process of its own."""

from __future__ import annotations

import argparse
import datetime
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import torch

from rlhf_trl.bench.workloads import OPT_SIZES, device_description

MEMORY_MODES = ("lora-zero3-offload", "lora-8bit")


def largest_fitting(candidates: list[str], fits: Callable[[str], bool]) -> tuple[str | None, dict[str, bool]]:
    """Binary search for the last candidate that fits, assuming candidates are sorted by size and that a model
    which does not fit means no larger one fits. Returns (largest fitting or None, every trial's outcome)."""
    low, high, best, tried = 0, len(candidates) - 1, None, {}
    while low <= high:
        middle = (low + high) // 2
        tried[candidates[middle]] = fits(candidates[middle])
        if tried[candidates[middle]]:
            best, low = candidates[middle], middle + 1
        else:
            high = middle - 1
    return best, tried


def trial_command(size: str, mode: str, result_path: Path, lora_rank: int, batch_size: int) -> list[str]:
    """One single-GPU trial of ``size`` in its own process (an out-of-memory error must not poison the search)."""
    from rlhf_trl.launch import config_for_deployment, launch_command
    from rlhf_trl.resources import accelerate_config

    bench_args = [
        "--preset", size, "--steps", "1", "--warmup-steps", "0", "--batch-size", str(batch_size), "--bf16",
        "--no-append", "--lora-rank", str(lora_rank), "--result-json", str(result_path),
    ]  # fmt: skip
    if mode == "lora-zero3-offload":
        config = accelerate_config("zero3_offload")
    elif mode == "lora-8bit":
        config, bench_args = config_for_deployment("single_gpu", None), [*bench_args, "--load-in-8bit"]
    else:
        raise ValueError(f"unknown memory mode {mode!r}; choose one of {MEMORY_MODES}")
    return launch_command(config, "rlhf_trl.bench.step3", bench_args, num_processes=1)


def run_trial(command: list[str], result_path: Path) -> bool:
    """True if the trial finished; False on CUDA out-of-memory; any other failure stops the search."""
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode == 0 and result_path.exists():
        return True
    output = process.stdout + process.stderr
    if "OutOfMemoryError" in output or "CUDA out of memory" in output:
        return False
    raise RuntimeError(f"memory-search trial failed for a reason other than GPU memory:\n{output[-4000:]}")


def memory_search(options: argparse.Namespace) -> str:
    """Run the search for every memory mode asked for; returns the markdown section."""
    if not torch.cuda.is_available():
        raise SystemExit("--memory-search needs a CUDA GPU")
    workdir = Path(tempfile.mkdtemp(prefix="rlhf-trl-memory-"))
    batch_size, lora_rank = options.batch_size or 4, options.lora_rank or 128
    lines = [
        f"## Largest OPT actor for step 3 on one GPU, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}",
        "",
        f"- Device: {device_description()}",
        f"- One PPO step of {batch_size} prompts, 256 + 256 tokens, bf16, OPT-350M critic and reward, LoRA rank "
        f"{lora_rank} on the actor",
    ]
    for mode in options.memory_modes:

        def fits(size: str, mode: str = mode) -> bool:
            result_path = workdir / f"{mode}-{size}.json"
            return run_trial(trial_command(size, mode, result_path, lora_rank, batch_size), result_path)

        best, tried = largest_fitting(list(OPT_SIZES), fits)
        outcomes = ", ".join(f"{size} {'fits' if ok else 'out of memory'}" for size, ok in tried.items())
        lines.append(f"- {mode}: largest fitting actor **{best or 'none'}** (trials: {outcomes})")
    return "\n".join(lines) + "\n"
