"""Nothing lost, nothing leaked: an output folder belongs to one run (lock, move-aside), resumes pick the newest
complete checkpoint, secrets never reach a file, and a full or unwritable disk is one line that keeps what was
saved before."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_trl.output_dir import (
    LOCK_NAME,
    STAGING_NAME,
    OutputDirError,
    claim_output_dir,
    find_resume_checkpoint,
    resumes_inside,
    save_atomically,
)
from rlhf_trl.redaction import is_secret_name, redact_argv, redact_mapping

ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_SuperSecretValue0123456789"
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def sft_command(output_dir, base_dir, *extra):
    return [
        sys.executable,
        "-m",
        "rlhf_trl.scripts.sft",
        "--config",
        str(ROOT / "recipes/tiny/sft.yaml"),
        "--model_name_or_path",
        str(base_dir),
        "--output_dir",
        str(output_dir),
        "--logging_steps",
        "1",
        "--plots",
        "false",
        *extra,
    ]


def run(command, **kwargs):
    return subprocess.run(command, env=ENVIRONMENT, capture_output=True, text=True, timeout=600, cwd=ROOT, **kwargs)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def training_steps(output_dir) -> list[int]:
    """Steps of the per-step training logs in metrics.jsonl (not the end-of-run summary or evaluation lines)."""
    lines = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines if "loss" in line and "train_runtime" not in line]


# ------------------------------------------------------------------------------------------------ secrets
def test_secret_names_and_values_are_recognised():
    assert all(is_secret_name(name) for name in ("hub_token", "--hub-token", "WANDB_API_KEY", "db_password", "secret"))
    assert not any(is_secret_name(name) for name in ("max_new_tokens", "pad_token", "eos_token", "learning_rate"))
    argv = ["rlhf-trl", "sft", "--hub_token", SECRET, "--api-key=abc", "--lr", "1", f"https://x/{SECRET}"]
    assert redact_argv(argv) == [
        "rlhf-trl",
        "sft",
        "--hub_token",
        "<redacted>",
        "--api-key=<redacted>",
        "--lr",
        "1",
        "https://x/<redacted>",
    ]
    assert redact_mapping({"hub_token": SECRET, "nested": {"password": "p"}, "seed": 1}) == {
        "hub_token": "<redacted>",
        "nested": {"password": "<redacted>"},
        "seed": 1,
    }


def test_sft_with_hub_token_writes_it_nowhere(tmp_path, tiny_base_dir):
    """Every file of the output folder, checkpoints and training_args.bin included, is free of the token."""
    output = tmp_path / "sft"
    result = run(
        sft_command(output, tiny_base_dir, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1")
        + ["--hub_token", SECRET]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = [path for path in output.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in files)
    assert (output / "checkpoint-1" / "training_args.bin").is_file()
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.stdout + result.stderr
    info = json.loads((output / "run_info.json").read_text())
    assert "--hub_token '<redacted>'" in info["command"] or "--hub_token <redacted>" in info["command"]
    assert not (output / LOCK_NAME).exists(), "a finished run releases its folder"


# ------------------------------------------------------------------------------------------------ ownership
def test_a_second_run_into_a_locked_folder_is_refused_naming_the_first(tmp_path, tiny_base_dir):
    output = tmp_path / "shared"
    holder_code = (
        "import sys, time\n"
        "from rlhf_trl.output_dir import claim_output_dir\n"
        "claim_output_dir(sys.argv[1], overwrite=False, resuming=False)\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(output)], env=ENVIRONMENT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run(sft_command(output, tiny_base_dir, "--max_steps", "1"))
        assert result.returncode == 2
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and f"pid {holder.pid} on {socket.gethostname()}" in lines[0], result.stderr
        assert "Traceback" not in result.stderr
        assert not (output / "config.json").exists() and not (output / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without releasing: the next run takes the folder over, saying so.
    lock = claim_output_dir(output, overwrite=False, resuming=False)
    assert json.loads((output / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (output / LOCK_NAME).exists()


def test_stale_lock_is_taken_over_with_a_note(tmp_path, capsys):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname()}))
    lock = claim_output_dir(tmp_path, overwrite=False, resuming=False)
    assert f"pid {dead_pid}" in capsys.readouterr().err
    lock.release()


def test_overwrite_moves_the_earlier_run_aside(tmp_path):
    output = tmp_path / "run"
    (output / "checkpoint-4").mkdir(parents=True)
    (output / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (output / "metrics.jsonl").write_text('{"step": 4, "loss": 1.0}\n')
    with pytest.raises(OutputDirError, match="--resume_from_checkpoint true"):
        claim_output_dir(output, overwrite=False, resuming=False)
    assert not (output / LOCK_NAME).exists(), "a refused claim leaves no lock behind"
    lock = claim_output_dir(output, overwrite=True, resuming=False)
    assert [path.name for path in output.iterdir()] == [LOCK_NAME]
    (previous,) = tmp_path.glob("run.previous-*")
    assert (previous / "metrics.jsonl").read_text() == '{"step": 4, "loss": 1.0}\n'
    assert (previous / "checkpoint-4" / "trainer_state.json").exists()
    lock.release()


def test_a_resume_clears_an_unfinished_final_save_and_keeps_the_rest(tmp_path):
    (tmp_path / STAGING_NAME).mkdir()
    (tmp_path / STAGING_NAME / "model.safetensors").write_bytes(b"half")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    lock = claim_output_dir(tmp_path, overwrite=False, resuming=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == [LOCK_NAME, "metrics.jsonl"]
    lock.release()


def test_resume_picks_the_newest_complete_checkpoint(tmp_path, capsys):
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert find_resume_checkpoint(tmp_path, "true") == tmp_path / "checkpoint-4"
    assert "checkpoint-6: half-written" in capsys.readouterr().err
    assert find_resume_checkpoint(tmp_path, None) is None
    with pytest.raises(OutputDirError, match="not a complete checkpoint"):
        find_resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-6"))
    with pytest.raises(OutputDirError, match="no such checkpoint"):
        find_resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-99"))
    with pytest.raises(OutputDirError, match="no complete checkpoint"):
        find_resume_checkpoint(tmp_path / "empty", "true")
    # Resuming from another folder's checkpoint starts a new run here (so --overwrite_output_dir may go with it).
    assert resumes_inside(tmp_path, "true") and resumes_inside(tmp_path, str(tmp_path / "checkpoint-4"))
    assert not resumes_inside(tmp_path / "new", str(tmp_path / "checkpoint-4"))
    assert not resumes_inside(tmp_path, None) and not resumes_inside(tmp_path, "false")


@pytest.mark.slow
def test_sft_killed_mid_run_resumes_from_its_newest_complete_checkpoint(tmp_path, tiny_base_dir):
    output = tmp_path / "sft"
    extra = ("--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "3")
    process = subprocess.Popen(
        sft_command(output, tiny_base_dir, "--max_steps", "400", *extra),
        env=ENVIRONMENT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    deadline = time.time() + 300
    while not (output / "checkpoint-4" / "trainer_state.json").exists():
        assert process.poll() is None, "the run ended before its checkpoints"
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output / "config.json").exists(), "the run finished before it was killed"
    complete = sorted(
        int(path.name.split("-")[1]) for path in output.glob("checkpoint-*") if (path / "trainer_state.json").exists()
    )
    newest = complete[-1]
    # What a kill during the Trainer's save leaves: a checkpoint folder with weights and no trainer state.
    half_written = output / f"checkpoint-{newest + 2}"
    half_written.mkdir(exist_ok=True)
    (half_written / "trainer_state.json").unlink(missing_ok=True)
    (half_written / "model.safetensors").write_bytes(b"truncated")

    final_step = newest + 4
    result = run(
        sft_command(output, tiny_base_dir, "--max_steps", str(final_step), *extra, "--resume_from_checkpoint", "true")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping {half_written}: half-written" in result.stderr
    assert f"resuming from {output / f'checkpoint-{newest}'}" in result.stderr
    assert "taking over" in result.stderr  # the killed run's lock
    assert training_steps(output) == list(range(1, final_step + 1)), "metrics.jsonl continues, without repeats"
    state = json.loads((output / f"checkpoint-{final_step}" / "trainer_state.json").read_text())
    assert state["global_step"] == final_step
    assert (output / "model.safetensors").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ disks
def test_failed_final_save_keeps_the_earlier_model(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"good model")
    (tmp_path / "critic").mkdir()
    (tmp_path / "critic" / "config.json").write_text("good critic")

    def full_disk(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))

    with pytest.raises(OSError):
        save_atomically(tmp_path, full_disk)
    assert (tmp_path / "model.safetensors").read_bytes() == b"good model"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["critic", "model.safetensors"]

    def good_save(folder: Path) -> None:
        (folder / "critic").mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"new model")
        (folder / "critic" / "config.json").write_text("new critic")

    save_atomically(tmp_path, good_save)
    assert (tmp_path / "model.safetensors").read_bytes() == b"new model"
    assert (tmp_path / "critic" / "config.json").read_text() == "new critic"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["critic", "model.safetensors"]


def test_sft_on_a_full_disk_is_one_line_and_keeps_the_earlier_model(tmp_path, tiny_base_dir, monkeypatch, capsys):
    from trl import SFTTrainer

    from rlhf_trl.scripts import sft

    output = tmp_path / "sft"
    extra = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2"]
    arguments = sft_command(output, tiny_base_dir, *extra)[3:]
    assert sft.cli(arguments) == 0
    earlier_model = (output / "model.safetensors").read_bytes()
    real_save = SFTTrainer.save_model

    def save_on_a_full_disk(self, output_dir=None, _internal_call=False):
        if _internal_call:  # checkpoints still save
            return real_save(self, output_dir, _internal_call)
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "model.safetensors"))

    monkeypatch.setattr(SFTTrainer, "save_model", save_on_a_full_disk)
    capsys.readouterr()
    more = [*arguments, "--resume_from_checkpoint", "true"]
    more[more.index("--max_steps") + 1] = "4"
    assert sft.cli(more) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "no space left on device" in lines[0], err
    assert "checkpoint-4" in lines[0] and "--resume_from_checkpoint true" in lines[0]
    assert (output / "model.safetensors").read_bytes() == earlier_model
    assert not (output / LOCK_NAME).exists()


def test_unwritable_output_dir_is_one_line(tmp_path, tiny_base_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    result = run(sft_command(blocker / "out", tiny_base_dir, "--max_steps", "1"))
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"cannot use {blocker / 'out'}: a file is in the way" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------ e2e
class FakeSteps:
    """Stands in for the launched step processes of `rlhf-trl e2e`: records each launch and finishes the step
    (run_info.json), or fails the steps named in ``failing`` after leaving a complete checkpoint behind."""

    def __init__(self, failing=()):
        self.failing = set(failing)
        self.launched: list[tuple[int, list[str]]] = []

    def __call__(self, command, log_path, step_description=None, metrics_path=None):
        from rlhf_trl.steps import STEPS

        launched = next(step for step in STEPS if step.module in command)
        step = launched.number
        arguments = command[command.index(launched.module) + 1 :]
        self.launched.append((step, arguments))
        step_dir = Path(arguments[arguments.index("--output_dir") + 1])
        step_dir.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            log.write(f"attempt of step {step}\n")
        if step in self.failing:
            (step_dir / "checkpoint-2").mkdir(exist_ok=True)
            (step_dir / "checkpoint-2" / "trainer_state.json").write_text("{}")
            return 1
        info = {"step_name": str(step), "final_metrics": {}, "wall_time_s": 1.0}
        (step_dir / "run_info.json").write_text(json.dumps(info))
        return 0


def test_e2e_rerun_with_resume_skips_finished_steps(tmp_path, monkeypatch, capsys):
    from rlhf_trl.reporting import report
    from rlhf_trl.scripts import e2e

    monkeypatch.setattr(report, "write_report", lambda run_dir: Path(run_dir) / "report.html")
    output = tmp_path / "run"
    base = ["--recipe", "tiny", "--output-dir", str(output), "--samples", "0"]
    first = FakeSteps(failing={2})
    monkeypatch.setattr(e2e, "run_logged", first)
    assert e2e.main(base) == 1
    assert [step for step, _ in first.launched] == [1, 2]
    assert "rerun with --resume" in capsys.readouterr().err

    refused = FakeSteps()
    monkeypatch.setattr(e2e, "run_logged", refused)
    assert e2e.main(base) == 2
    message = capsys.readouterr().err
    assert "--resume" in message and refused.launched == []

    second = FakeSteps()
    monkeypatch.setattr(e2e, "run_logged", second)
    assert e2e.main([*base, "--resume"]) == 0
    assert [step for step, _ in second.launched] == [2, 3], "step 1 finished: not trained again"
    step2_arguments = second.launched[0][1]
    assert step2_arguments[step2_arguments.index("--resume_from_checkpoint") + 1] == "true"
    assert "--overwrite_output_dir" not in step2_arguments
    assert "step 1 (step1_sft) finished earlier" in capsys.readouterr().out
    assert (output / "step2.log").read_text() == "attempt of step 2\nattempt of step 2\n", "logs keep both attempts"
    assert not (output / LOCK_NAME).exists()

    third = FakeSteps()
    monkeypatch.setattr(e2e, "run_logged", third)
    assert e2e.main([*base, "--overwrite_output_dir", "--step", "2", "3"]) == 0
    assert [step for step, _ in third.launched] == [2, 3]
    (previous,) = tmp_path.glob("run.previous-*")
    assert sorted(path.name for path in previous.iterdir()) == [
        "e2e_summary.json",
        "step2.log",
        "step2_reward",
        "step3.log",
        "step3_ppo",
    ]
    assert (output / "step1_sft" / "run_info.json").exists(), "step 1 was not chosen: it stays for step 2 and 3"
    assert not (output / "step2_reward" / "checkpoint-2").exists()
