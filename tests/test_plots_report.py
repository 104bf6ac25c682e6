"""Training plots and the HTML report, on a synthetic run folder: which figures appear for which metrics, clear
errors for missing metrics, a self-contained escaped page, and a real render in headless Chromium."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import pytest

from rlhf_trl.reporting.plots import MetricsError, plot_step, read_metrics
from rlhf_trl.reporting.report import ReportError, build_report, main, write_report

HOSTILE_COMPLETION = "<script>alert('x')</script> 1 & 2"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _run_info(step_name: str, final_metrics: dict, hyperparameters: dict) -> dict:
    return {
        "step_name": step_name,
        "base_model": "tiny-base",
        "datasets": ["tiny"],
        "data_split": "2,4,4",
        "hyperparameters": hyperparameters,
        "final_metrics": final_metrics,
        "command": f"rlhf-trl {step_name} --config recipes/tiny/{step_name}.yaml",
        "wall_time_s": 12.5,
        "lora": False,
    }


def make_sft(folder: Path) -> None:
    rows = [{"step": step, "loss": 3.0 / step, "learning_rate": 1e-4} for step in range(1, 21)]
    rows += [{"step": step, "eval_loss": 3.5 / step} for step in (5, 10, 15, 20)]
    _write_jsonl(folder / "metrics.jsonl", rows)
    info = _run_info("sft", {"eval_loss": 0.175}, {"learning_rate": 0.0001, "num_train_epochs": 1})
    (folder / "run_info.json").write_text(json.dumps(info))


def make_reward(folder: Path) -> None:
    rows = [
        {"step": step, "loss": 0.7 / step, "accuracy": 1 - 0.5 / step, "margin": step / 10} for step in range(1, 11)
    ]
    rows += [{"step": 10, "eval_loss": 0.2, "eval_accuracy": 0.91, "eval_margin": 1.2}]
    _write_jsonl(folder / "metrics.jsonl", rows)
    (folder / "run_info.json").write_text(json.dumps(_run_info("reward", {"eval_accuracy": 0.91}, {"lr": 5e-5})))
    (folder / "eval_scores.json").write_text(
        json.dumps({"chosen": [1.0, 1.5, 2.0, 0.2], "rejected": [0.1, -0.5, 0.3]})
    )


def make_ppo(folder: Path) -> None:
    rows = []
    for step in range(1, 31):
        rows.append(
            {
                "step": step,
                "objective/score": 0.1 * step,  # the reward model is pleased ...
                "objective/gold_score": 0.8 - 0.02 * step,  # ... while real quality drops: reward hacking
                "objective/kl": 0.05 * step,
                "objective/entropy": 2.0 - 0.03 * step,
                "objective/rlhf_reward": 0.1 * step - 0.005 * step,
                "policy/clip_fraction": 0.1,
                "value/clip_fraction": 0.2,
                "policy/approx_kl": 0.01,
                "policy/loss": -0.01,
                "value/loss": 0.5 / step,
                "response/length": 5 + step / 10,
                "response/no_eos_fraction": 0.0,
                "time/generation_s": 0.3,
            }
        )
    _write_jsonl(folder / "metrics.jsonl", rows)
    info = _run_info("ppo", {"objective/score": 3.0}, {"kl_coef": 0.1, "cliprange": 0.2})
    (folder / "run_info.json").write_text(json.dumps(info))
    samples = []
    for step in (1, 15, 30):
        for index in range(6):
            samples.append(
                {
                    "step": step,
                    "prompt": f"Human: sort {index} 1 Assistant:",
                    "completion": HOSTILE_COMPLETION if step == 30 else f"marker-step-{step}-{index}",
                    "score": 0.1 * step,
                    "gold_score": None if index == 0 else 0.5,
                }
            )
    _write_jsonl(folder / "samples.jsonl", samples)


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    make_sft(tmp_path / "run" / "step1_sft")
    make_reward(tmp_path / "run" / "step2_reward")
    make_ppo(tmp_path / "run" / "step3_ppo")
    summary = {
        "steps": [
            {"step": "sft", "wall_time_s": 12.5, "key_metric": "eval_loss", "value": 0.175},
            {"step": "reward", "wall_time_s": 20.0, "key_metric": "eval_accuracy", "value": 0.91},
            {"step": "ppo", "wall_time_s": 40.0, "key_metric": "objective/gold_score", "value": 0.2},
        ]
    }
    (tmp_path / "run" / "e2e_summary.json").write_text(json.dumps(summary))
    return tmp_path / "run"


def _is_png_with_content(path: Path) -> bool:
    image = matplotlib.image.imread(path)
    return image.shape[0] > 100 and image.shape[1] > 100 and float(image[..., :3].std()) > 0.01


def test_plots_of_each_step(run_dir):
    sft = plot_step(run_dir / "step1_sft")
    assert [path.name for path in sft] == ["loss.png"]
    reward = plot_step(run_dir / "step2_reward")
    assert [path.name for path in reward] == ["loss.png", "accuracy.png", "margin.png", "score_histogram.png"]
    ppo = plot_step(run_dir / "step3_ppo")
    expected = ["score_vs_gold.png", "kl.png", "entropy.png", "clip_fraction.png", "response_length.png"]
    assert [path.name for path in ppo] == [*expected, "ppo_losses.png", "time.png"]
    for path in sft + reward + ppo:
        assert path.parent == path.parents[1] / "plots" and _is_png_with_content(path)


def test_missing_metrics_are_skipped_and_destination_is_respected(tmp_path):
    _write_jsonl(tmp_path / "step" / "metrics.jsonl", [{"step": 1, "objective/score": 1.0}, {"step": 2, "loss": 1}])
    (tmp_path / "step" / "run_info.json").write_text(json.dumps({"step_name": "ppo"}))
    paths = plot_step(tmp_path / "step", destination=tmp_path / "figures")
    assert [path.name for path in paths] == ["score_vs_gold.png"]
    assert not (tmp_path / "step" / "plots").exists()


def test_step_is_recognised_without_run_info(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", [{"step": 1, "objective/kl": 0.1}, {"step": 2, "objective/kl": 0.2}])
    assert [path.name for path in plot_step(tmp_path)] == ["kl.png"]


def test_non_finite_values_are_left_out(tmp_path):
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": math.nan}, {"step": 3, "loss": 0.5}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))  # json writes NaN, as the trainers may
    assert [path.name for path in plot_step(tmp_path)] == ["loss.png"]


@pytest.mark.parametrize(
    "content, message",
    [(None, "no metrics file"), ("", "is empty"), ("\n\n", "is empty"), ('{"step": 1}\n{oops\n', "line 2")],
)
def test_unusable_metrics_file_gives_clear_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(MetricsError, match=message) as error:
        plot_step(tmp_path)
    assert str(tmp_path / "metrics.jsonl") in str(error.value)
    assert read_metrics.__doc__  # the reader is the public entry for other tools


def test_report_holds_every_step_and_is_self_contained(run_dir):
    text = build_report(run_dir)
    for title in ("Step 1: supervised fine-tuning", "Step 2: reward model", "Step 3: PPO", "Pipeline summary"):
        assert title in text
    assert "Total wall time: 72.5 s" in text
    assert "rlhf-trl ppo --config recipes/tiny/ppo.yaml" in text
    assert "kl_coef" in text and "eval_accuracy" in text and "2,4,4" in text
    assert text.count('src="data:image/png;base64,') == 1 + 4 + 7
    assert "http://" not in text and "https://" not in text and "<script" not in text and "<link" not in text
    # Samples: the first and last logged steps, four each, escaped.
    assert "marker-step-1-3" in text and "marker-step-1-4" not in text and "marker-step-15" not in text
    assert html_escaped(HOSTILE_COMPLETION) in text


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_report_of_a_subset_and_of_a_single_step(run_dir, tmp_path):
    shutil.rmtree(run_dir / "step3_ppo")
    (run_dir / "step2_reward" / "metrics.jsonl").unlink()
    text = build_report(run_dir)
    assert "Step 1" in text and "Step 2" in text and "Step 3" not in text
    assert "No training curves" in text and "no metrics file" in text
    single = build_report(run_dir / "step1_sft")
    assert "Step: sft" in single and single.count("data:image/png") == 1


def test_report_command(run_dir, tmp_path, capsys):
    output = tmp_path / "out" / "report.html"
    assert main([str(run_dir), "--output", str(output)]) == 0
    assert output.is_file() and capsys.readouterr().out.strip() == str(output)
    assert main([str(tmp_path / "empty")]) == 1
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no step output"):
        build_report(tmp_path / "empty")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not on PATH (apt-get install chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    report = write_report(run_dir)
    screenshot = tmp_path / "report.png"
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1200,2000",
        report.resolve().as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=90, check=False)
    assert screenshot.is_file(), "chromium wrote no screenshot"
    image = matplotlib.image.imread(screenshot)[..., :3]
    assert image.shape[:2] == (2000, 1200)
    not_white = (image < 0.95).any(axis=-1).mean()
    assert not_white > 0.02, "the screenshot is blank"
    assert image.std() > 0.05


def test_report_shows_an_estimator_comparison_when_the_run_dir_holds_one(run_dir):
    assert "Estimator comparison" not in build_report(run_dir)
    folder = run_dir / "comparison"
    folder.mkdir()
    spread = {"mean": 0.81, "min": 0.8, "max": 0.82}
    summary = {
        "baseline": {"gold_score": 0.79, "score": 1.6},
        "command": "python benchmarks/compare_estimators.py --seeds 42 7 1",
        "algorithms": {
            HOSTILE_COMPLETION: {"seeds": [42, 7, 1], "gold_score": spread, "gold_change": 0.02, "hacking_seeds": []},
            "grpo": {"seeds": [42], "gold_score": spread, "hacking_seeds": [42]},
        },
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    text = build_report(run_dir)
    assert "<h2>Estimator comparison</h2>" in text and "0.8100 [0.8000, 0.8200]" in text
    assert html_escaped(HOSTILE_COMPLETION) in text and "<td>42</td>" in text
    assert "No curves.png" in text
    plot_step(run_dir / "step1_sft", destination=folder)
    next(folder.glob("*.png")).rename(folder / "curves.png")
    with_plot = build_report(run_dir)
    assert with_plot.count('src="data:image/png;base64,') == text.count('src="data:image/png;base64,') + 1
