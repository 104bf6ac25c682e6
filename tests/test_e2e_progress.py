"""`rlhf-trl e2e` shows a running step's progress from its metrics.jsonl, never from its log text."""

from __future__ import annotations

import json
import sys
import textwrap

from rlhf_trl.scripts import e2e
from rlhf_trl.scripts.step_progress import MetricsFollower, progress_line
from rlhf_trl.steps import PPO, SFT

# A stand-in for a step process: appends PPO records to metrics.jsonl, and prints a line that looks like the
# trainer's log (which must not be shown) and a traceback (which must). After its first record it waits until
# e2e has shown that record, so the test also proves that progress is read while the step runs.
FAKE_STEP = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    metrics, seen = Path(sys.argv[1]), Path(sys.argv[2])

    def append(record):
        with metrics.open("a") as handle:
            handle.write(json.dumps(record) + "\\n")

    print("INFO rlhf_trl.ppo.trainer: step 7/9  score=9.999", flush=True)
    append({"step": 1, "objective/score": 0.25, "objective/kl": 0.01, "loss/policy": 3.0})
    deadline = time.time() + 30
    while not seen.exists() and time.time() < deadline:
        time.sleep(0.02)
    print("progress seen while running" if seen.exists() else "progress not seen while running", flush=True)
    append({"step": 2, "objective/score": 0.5, "objective/kl": 0.02})
    append({"step": 3, "loss/policy": 1.0})
    with metrics.open("a") as handle:
        handle.write('{"step": 4, "objective/sco')  # a record still being written when the step dies
    print("Traceback (most recent call last):", flush=True)
    print("RuntimeError: the fake step stops here", flush=True)
    sys.exit(3)
    """
)


def test_e2e_progress_comes_from_metrics_jsonl(tmp_path, monkeypatch, capsys):
    step_dir = tmp_path / "step3_ppo"
    step_dir.mkdir()
    metrics = step_dir / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 99, "objective/score": 7.0}) + "\n")  # an earlier attempt's record
    seen = tmp_path / "seen"
    script = tmp_path / "fake_step.py"
    script.write_text(FAKE_STEP)

    def progress_and_mark(step, record):
        seen.touch()
        return progress_line(step, record)

    monkeypatch.setattr(e2e, "progress_line", progress_and_mark)
    monkeypatch.setattr(e2e, "PROGRESS_POLL_S", 0.05)
    log = tmp_path / "step3.log"
    command = [sys.executable, str(script), str(metrics), str(seen)]
    assert e2e.run_logged(command, log, PPO, metrics) == 3

    shown = [line.strip() for line in capsys.readouterr().out.splitlines()]
    progress = [line for line in shown if line.startswith("ppo step")]
    assert progress == ["ppo step 1  score=0.25  kl=0.01", "ppo step 2  score=0.5  kl=0.02"], shown
    assert "INFO rlhf_trl.ppo.trainer: step 7/9  score=9.999" not in shown, "log text is not progress"
    assert "Traceback (most recent call last):" in shown and "RuntimeError: the fake step stops here" in shown
    log_text = log.read_text()
    assert "progress seen while running" in log_text, "records are shown while the step runs, not only at its end"
    assert "INFO rlhf_trl.ppo.trainer: step 7/9" in log_text and "RuntimeError" in log_text, "the log keeps it all"


def test_follower_skips_earlier_records_waits_for_whole_lines_and_follows_a_new_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    follower = MetricsFollower(path)
    assert follower.new_records() == [], "no file yet"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert follower.new_records() == [{"step": 1, "loss": 2.0}]
    with path.open("a") as handle:
        handle.write('ss": 1.5}\n')
    assert follower.new_records() == [{"step": 2, "loss": 1.5}]

    earlier = MetricsFollower(path)
    assert earlier.new_records() == [], "records written before the follower started belong to earlier attempts"
    path.write_text('{"step": 1, "loss": 2.0}\n')  # a resumed step cut the file back to its checkpoint
    assert earlier.new_records() == []
    with path.open("a") as handle:
        handle.write('{"step": 2, "loss": 1.25}\n')
    assert earlier.new_records() == [{"step": 2, "loss": 1.25}]

    path.rename(tmp_path / "moved-aside.jsonl")  # a step started afresh writes a new file
    path.write_text('{"step": 1, "loss": 3.0}\n')
    assert earlier.new_records() == [{"step": 1, "loss": 3.0}]


def test_progress_line_shows_the_steps_main_metrics():
    assert progress_line(SFT, {"step": 5, "loss": 1.23456, "learning_rate": 1e-5}) == "sft step 5  loss=1.235"
    assert progress_line(SFT, {"step": 5, "learning_rate": 1e-5}) is None
