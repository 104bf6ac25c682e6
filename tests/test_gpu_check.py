"""The CPU-safe parts of the speed tooling: the GPU check's argument handling, its refusal without CUDA and its
BENCHMARKS.md summary; the wheel list taken from the lock; the step-3 profiler's pad-share accounting."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"
GPU_WHEELS = REPO / "benchmarks" / "gpu_wheels.sh"
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check_report  # noqa: E402
import step3_profile  # noqa: E402


def run(*command, **env):
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, env={**os.environ, **env}, cwd=REPO
    )


def test_gpu_check_help_and_bad_options():
    assert run(GPU_CHECK, "--help").returncode == 0
    for arguments in (["--bogus"], ["--only", "nonsense"], ["--only"]):
        result = run(GPU_CHECK, *arguments)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("gpu_check.sh: ")


def test_gpu_check_dry_run_plans_every_part_within_ten_minutes():
    result = run(GPU_CHECK, "--dry-run")
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert names == ["install", "gpu-tests", "bench-hf", "bench-ds", "bench-llama", "vllm", "memory"]
    limits = [int(line.split()[1].rstrip("s")) for line in lines]
    assert sum(limits) <= 700  # parts' limits; everything but the install must fit 600 s
    assert sum(limits[1:]) <= 600
    joined = result.stdout
    assert "--rollout-backend deepspeed" in joined and "--preset llama-1b" in joined and "-m gpu" in joined


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_without_cuda_and_writes_nothing(tmp_path):
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\nearlier results\n")
    log = tmp_path / "log" / "check.log"
    result = run(GPU_CHECK, "--benchmarks-file", benchmarks, "--log", log, PYTHON=sys.executable)
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr
    assert benchmarks.read_text() == "# Benchmarks\n\nearlier results\n"
    assert not log.exists()


def test_gpu_check_report_appends_a_summary(tmp_path):
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\nearlier results\n")
    parts = tmp_path / "parts.tsv"
    parts.write_text("gpu-tests\t0\t41\t120\nbench-hf\t124\t120\t120\nbench-ds\t1\t12\t120\nvllm\t3\t0\t10\n")
    code = gpu_check_report.main(
        ["--parts", str(parts), "--device", "1 x NVIDIA H200", "--command", "benchmarks/gpu_check.sh",
         "--log", "outputs/gpu_check/x.log", "--benchmarks-file", str(benchmarks)]
    )  # fmt: skip
    assert code == 0
    text = benchmarks.read_text()
    assert text.startswith("# Benchmarks\n\nearlier results\n")
    assert "## GPU check, " in text and "- Device: 1 x NVIDIA H200" in text
    assert "- Command: `benchmarks/gpu_check.sh`" in text
    assert "| gpu-tests | ok | 41 |" in text
    assert "| bench-hf | timed out (limit 120 s) | 120 |" in text
    assert "| bench-ds | failed (exit 1) | 12 |" in text
    assert "| vllm | skipped | 0 |" in text


def test_gpu_check_report_rejects_a_malformed_parts_file(tmp_path, capsys):
    parts = tmp_path / "parts.tsv"
    parts.write_text("gpu-tests 0\n")
    benchmarks = tmp_path / "BENCHMARKS.md"
    code = gpu_check_report.main(
        ["--parts", str(parts), "--device", "d", "--command", "c", "--log", "l", "--benchmarks-file", str(benchmarks)]
    )
    assert code == 2
    assert "line 1" in capsys.readouterr().err
    assert not benchmarks.exists()


def test_gpu_wheels_lists_the_lock_without_torch(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("# a comment\naccelerate==1.15.0\ntorch==2.13.0\nnvidia-cublas-cu12==12.0\nTyping_Extensions==4\n"
                    "deepspeed==0.19.8\nruff==0.17.6\n\n")  # fmt: skip
    result = run(GPU_WHEELS, "--constraints", lock, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[1:] == ["accelerate==1.15.0", "deepspeed==0.19.8"]
    missing = run(GPU_WHEELS, "--constraints", tmp_path / "none.txt", "--dry-run")
    assert missing.returncode == 2 and "no such lock file" in missing.stderr


def test_generation_pad_shares_count_prompt_padding_and_finished_answers():
    rollout = SimpleNamespace(
        prompt_mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
        completion_mask=torch.tensor([[1, 1, 1], [1, 0, 0]]),
    )
    shares = step3_profile.generation_pad_shares(rollout)
    assert shares["prefill_pad_share"] == pytest.approx(2 / 8)
    assert shares["decode_wasted_share"] == pytest.approx(2 / 6)
    assert shares["mean_answer_tokens"] == pytest.approx(2.0)


def test_forward_probe_counts_pad_tokens_per_phase_and_model():
    class Model(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    model, probe = Model(), step3_profile.ForwardProbe()
    probe.attach("actor", model)
    probe.phase = "generation"
    model(torch.ones(2, 4), attention_mask=torch.ones(2, 4))  # not counted: generation uses its own accounting
    probe.phase = "scoring"
    model(torch.ones(2, 4), attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    model(torch.ones(1, 4), torch.tensor([[0, 0, 1, 1]]))
    (row,) = probe.table()
    assert (row["phase"], row["model"], row["forwards"], row["positions"]) == ("scoring", "actor", 2, 12)
    assert row["pad_share"] == pytest.approx(3 / 12)


def test_step3_profile_help():
    result = run(sys.executable, REPO / "benchmarks" / "step3_profile.py", "--help", PYTHONPATH=str(REPO))
    assert result.returncode == 0 and "--workload" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--variant", "packed"], "--variant 'packed'"),
        (["--variant", "packed=HEAD"], "--variant 'packed=HEAD'"),
        ([], "--rev or --variant"),
        (["--rev", "no-such-revision"], "'no-such-revision'"),
    ],
)
def test_tiny_ppo_speed_bad_input_is_one_line(arguments, named):
    result = run(sys.executable, REPO / "benchmarks" / "tiny_ppo_speed.py", *arguments, PYTHONPATH=str(REPO))
    assert result.returncode == 2 and named in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    listed = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert "tiny-ppo-speed-" not in listed


@pytest.mark.slow
def test_tiny_ppo_speed_measures_variants_side_by_side(tiny_base_dir, tiny_reward_dir, tmp_path):
    """benchmarks/tiny_ppo_speed.py on a git worktree of HEAD: two sides with their own PPO flags, each a real PPO
    run (2 steps here), summarised in a markdown table appended to the given file; its worktrees are removed."""
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    report = tmp_path / "BENCH.md"
    quick = "--max_steps,2,--logging_steps,1,--eval_prompts_limit,16"
    result = run(
        sys.executable, REPO / "benchmarks" / "tiny_ppo_speed.py", "--variant", f"plain=HEAD:{quick}",
        "--variant", f"one-epoch=HEAD:{quick},--num_ppo_epochs,1", "--rounds", "1",
        "--sft-model", tiny_base_dir, "--reward-model", tiny_reward_dir, "--append", report, PYTHONPATH=str(REPO),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = report.read_text().splitlines()
    rows = {line.split("|")[1].strip(): line.split("|") for line in lines if line.startswith("| ")}
    assert rows["plain"][4].strip() == "1.00x" and float(rows["one-epoch"][3]) > 0
    assert 0.0 <= float(rows["one-epoch"][5]) <= 1.0  # the held-out gold score of the run
    listed = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert "tiny-ppo-speed-" not in listed, "the script's worktrees must be removed"


@pytest.mark.parametrize(
    ("arguments", "named"),
    [(["--micro-batch", "0"], "--micro-batch"), (["--prompts", "6", "--micro-batch", "4"], "--prompts 6")],
)
def test_update_width_bad_input_is_one_line(arguments, named):
    result = run(sys.executable, REPO / "benchmarks" / "update_width.py", *arguments, PYTHONPATH=str(REPO))
    assert result.returncode == 2 and named in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_update_width_measures_both_sides_on_the_same_rollout(tmp_path):
    """benchmarks/update_width.py runs real updates on a rollout of uneven answers, cut and at the whole width, and
    appends a table in which the cut side reads fewer positions than the whole-width side."""
    report = tmp_path / "BENCH.md"
    result = run(
        sys.executable, REPO / "benchmarks" / "update_width.py", "--prompts", "8", "--answer-length", "16",
        "--micro-batch", "2", "--repeats", "1", "--append", report, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|") for line in report.read_text().splitlines() if "| " in line}
    cut, whole = rows["cut"], rows["whole rollout width"]
    whole_positions = int(whole[4].replace(",", ""))
    assert whole_positions == 8 * (64 + 16)  # every micro-batch at the rollout's width (answers sampled to 16)
    assert 0 < int(cut[4].replace(",", "")) < whole_positions
    assert whole[5].strip() == "1.00x" and float(cut[3]) > 0


@pytest.mark.slow
def test_tiny_ppo_speed_stopped_midway_leaves_no_worktree(tiny_base_dir, tiny_reward_dir):
    """SIGTERM while a PPO run is under way: the script exits, its PPO run is stopped and its worktree removed."""
    import signal
    import time

    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "tiny_ppo_speed.py"), "--rev", "HEAD", "--rounds", "1",
         "--sft-model", str(tiny_base_dir), "--reward-model", str(tiny_reward_dir)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip

    def worktrees() -> str:
        return subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout

    deadline = time.monotonic() + 120
    while "tiny-ppo-speed-" not in worktrees() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # the PPO run has started
    assert process.poll() is None, "the measurement ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert "tiny-ppo-speed-" not in worktrees()
    runs = subprocess.run(["pgrep", "-f", "tiny-ppo-speed-"], capture_output=True, text=True).stdout
    assert not runs.strip(), "a PPO run of the stopped measurement is still running"


def test_gpu_check_runs_its_parts_and_clears_a_stale_build_lock(tmp_path):
    """The check's loop on this CPU machine, through a python that answers the two CUDA probes as a GPU machine
    would: the install part installs the wheels and checks the requirements, vllm is skipped, a build lock left by a
    stopped part is removed and said, and the summary lands in the benchmarks file."""
    shim = tmp_path / "python"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in\n'
        "  *cuda.is_available*) exit 0 ;;\n"
        '  *get_device_name*) echo "1 x Pretend GPU"; exit 0 ;;\n'
        "esac\n"
        f'exec {sys.executable} "$@"\n'
    )
    shim.chmod(0o755)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    files = {
        "tinypkg/__init__.py": "VALUE = 7\n",
        "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files["tinypkg-1.0.dist-info/RECORD"] = "".join(f"{name},,\n" for name in [*files, "tinypkg-1.0.dist-info/RECORD"])
    with zipfile.ZipFile(wheels / "tinypkg-1.0-py3-none-any.whl", "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    extensions = tmp_path / "extensions"
    stale = extensions / "deepspeed_shm_comm" / "lock"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n")
    site, log = tmp_path / "site", tmp_path / "check.log"
    environment = {"PYTHON": str(shim), "TORCH_EXTENSIONS_DIR": str(extensions), "OUT": ""}
    result = run(
        GPU_CHECK, "--wheels", wheels, "--site", site, "--benchmarks-file", benchmarks, "--log", log,
        "--only", "install", "vllm", **environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr + (log.read_text() if log.exists() else "")
    assert not stale.exists() and f"install: removed {stale}" in result.stdout
    assert (site / "tinypkg" / "__init__.py").is_file()
    assert "every requirement of the project and of what it pulls in is met" in log.read_text()
    summary = benchmarks.read_text()
    assert "- Device: 1 x Pretend GPU" in summary
    assert "| install | ok |" in summary and "| vllm | skipped | 0 |" in summary


@pytest.mark.slow
def test_rollout_logprobs_memory_compares_both_paths(tmp_path):
    """benchmarks/rollout_logprobs_memory.py runs both sides in fresh processes and appends their table; with a
    vocabulary large enough to show, the stored-logits side grows by at least what its logits take, the default
    by less."""
    report = tmp_path / "BENCH.md"
    result = run(
        sys.executable, REPO / "benchmarks" / "rollout_logprobs_memory.py", "--vocab", "32000", "--batch", "8",
        "--answer-length", "64", "--append", report, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|") for line in report.read_text().splitlines() if "| " in line}
    stored_logits = 8 * 32000 * 4 * 64 / 2**20  # 62.5 MiB
    default = float(rows["read during decoding (default)"][2].replace(",", ""))
    stored = float(rows["output_logits (static cache)"][2].replace(",", ""))
    assert stored >= stored_logits and default < stored - stored_logits / 2
    bad = run(sys.executable, REPO / "benchmarks" / "rollout_logprobs_memory.py", "--batch", "0", PYTHONPATH=str(REPO))
    assert bad.returncode == 2 and "--batch" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
