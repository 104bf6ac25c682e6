"""benchmarks/compare_estimators.py on fabricated run folders: reading, aggregation, the table and the plot (no
training)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

HARNESS_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_estimators.py"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("compare_estimators", HARNESS_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_estimators"] = module  # registered before it runs: its dataclasses look it up by name
    spec.loader.exec_module(module)
    return module


def write_ours(run_dir: Path, gold: list[float], score: list[float], step_time: float, wall: float, rss_mib: float):
    """A 4-step rlhf-trl ppo run with 16 completions per step, evaluated at steps 2 and 4."""
    output = run_dir / "output"
    output.mkdir(parents=True)
    lines = []
    for step in range(1, 5):
        record = {
            "step": step,
            "episodes": 16.0 * step,
            "time/generation_s": step_time / 2,
            "time/scoring_s": step_time / 4,
            "time/training_s": step_time / 4,
            "objective/score": 9.0,
        }
        if step % 2 == 0:
            record |= {"eval/gold_score": gold[step // 2 - 1], "eval/score": score[step // 2 - 1]}
        lines.append(json.dumps(record))
    (output / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    final = {"eval/gold_score": gold[-1], "eval/score": score[-1], "rollout_backend": "hf"}
    (output / "run_info.json").write_text(json.dumps({"final_metrics": final}))
    harness_record = {"command": [], "returncode": 0, "wall_time_s": wall, "peak_rss_mib": rss_mib}
    (run_dir / "harness.json").write_text(json.dumps(harness_record))


def write_trl(run_dir: Path, gold: list[float], score: list[float], times: list[float], wall: float, rss_mib: float):
    output = run_dir / "output"
    output.mkdir(parents=True)
    curve = [
        {"samples": samples, "train_time_s": time, "gold_score": g, "score": s}
        for samples, time, g, s in zip((32, 64), times, gold, score)
    ]
    result = {"samples": 64, "eval_gold_score": gold[-1], "eval_score": score[-1], "train_time_s": times[-1]}
    (output / "result.json").write_text(json.dumps({**result, "curve": curve}))
    harness_record = {"command": [], "returncode": 0, "wall_time_s": wall, "peak_rss_mib": rss_mib}
    (run_dir / "harness.json").write_text(json.dumps(harness_record))


@pytest.fixture
def results(harness, tmp_path):
    ours, trl = harness.ALGORITHMS["ppo_gae"], harness.ALGORITHMS["trl_grpo"]
    write_ours(tmp_path / "ppo_gae" / "seed1", [0.6, 0.7], [1.0, 2.0], step_time=1.0, wall=10.0, rss_mib=500.0)
    write_ours(tmp_path / "ppo_gae" / "seed2", [0.8, 0.9], [1.5, 2.5], step_time=2.0, wall=14.0, rss_mib=520.0)
    write_trl(tmp_path / "trl_grpo" / "seed1", [0.5, 0.4], [3.0, 4.0], [1.0, 3.0], wall=20.0, rss_mib=600.0)
    write_trl(tmp_path / "trl_grpo" / "seed2", [0.7, 0.6], [3.0, 5.0], [2.0, 5.0], wall=30.0, rss_mib=640.0)
    return [
        harness.parse_run(tmp_path / "ppo_gae" / "seed1", ours, 1),
        harness.parse_run(tmp_path / "ppo_gae" / "seed2", ours, 2),
        harness.parse_run(tmp_path / "trl_grpo" / "seed1", trl, 1),
        harness.parse_run(tmp_path / "trl_grpo" / "seed2", trl, 2),
    ]


def test_parse_ours_sums_step_times_up_to_each_evaluation(results):
    first = results[0]
    assert first.samples == 64
    assert (first.gold_score, first.score) == (0.7, 2.0)
    assert first.train_time_s == pytest.approx(4.0)
    assert [point["samples"] for point in first.curve] == [32, 64]
    assert [point["train_time_s"] for point in first.curve] == pytest.approx([2.0, 4.0])
    assert (first.wall_time_s, first.peak_rss_mib) == (10.0, 500.0)


def test_parse_ours_refuses_a_run_not_logged_at_every_step(harness, tmp_path):
    write_ours(tmp_path / "run", [0.6, 0.7], [1.0, 2.0], step_time=1.0, wall=1.0, rss_mib=1.0)
    metrics = tmp_path / "run" / "output" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match="every step"):
        harness.parse_run(tmp_path / "run", harness.ALGORITHMS["ppo_gae"], 1)


def test_summary_table_and_plot(harness, results, tmp_path):
    baseline = {"gold_score": 0.65, "score": 1.8}
    summary = harness.summarise(results, baseline)
    ppo, grpo = summary["algorithms"]["ppo_gae"], summary["algorithms"]["trl_grpo"]
    assert ppo["gold_score"] == pytest.approx({"mean": 0.8, "min": 0.7, "max": 0.9})
    assert ppo["train_time_s"] == pytest.approx({"mean": 6.0, "min": 4.0, "max": 8.0})
    assert grpo["score"] == pytest.approx({"mean": 4.5, "min": 4.0, "max": 5.0})
    assert grpo["gold_change"] == pytest.approx(0.5 - 0.65)
    # Reward up and gold down against the SFT model: both TRL seeds; PPO seed 1 lost gold (0.7 > 0.65: no).
    assert grpo["hacking_seeds"] == [1, 2]
    assert ppo["hacking_seeds"] == []
    # The curve starts at the SFT model and averages the seeds at each sample count.
    assert [point["samples"] for point in grpo["curve"]] == [0, 32, 64]
    assert grpo["curve"][1]["gold_score"] == pytest.approx({"mean": 0.6, "min": 0.5, "max": 0.7})
    assert grpo["curve"][2]["train_time_s"]["mean"] == pytest.approx(4.0)

    table = harness.markdown_table(summary)
    (ppo_row,) = [line for line in table.splitlines() if line.startswith("| ppo_gae | 2 | 64 |")]
    assert ppo_row == (
        "| ppo_gae | 2 | 64 | 0.8000 [0.7000, 0.9000] | +0.1500 | 2.250 [2.000, 2.500] | +0.450 "
        "| 6.0 [4.0, 8.0] | 12.0 [10.0, 14.0] | 510 [500, 520] | none |"
    )
    assert "| trl_grpo | 2 | 64 | 0.5000 [0.4000, 0.6000] | -0.1500 | 4.500 [4.000, 5.000] | +2.700 " in table
    assert "| 1, 2 |" in table
    assert "| trl_grpo | 2 | 0.6000 | 5.000 | 5.0 | 30.0 | 640 |" in table

    harness.write_outputs(summary, tmp_path)
    png = tmp_path / "curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "summary.json").read_text())["algorithms"]["ppo_gae"]["seeds"] == [1, 2]
    assert (tmp_path / "summary.md").read_text() == table


def test_every_algorithm_has_a_command(harness, tmp_path):
    for algorithm in harness.ALGORITHMS.values():
        command = harness.run_command(algorithm, tmp_path / "base", tmp_path / "run", 7)
        assert "7" in command and str(tmp_path / "run" / "output") in command
        assert str(tmp_path / "base" / "step1_sft") in command
    ours = harness.run_command(harness.ALGORITHMS["ppo_gae"], tmp_path, tmp_path / "run", 7)
    assert ours[ours.index("--logging_steps") + 1] == "1"
    trl = harness.run_command(harness.ALGORITHMS["trl_rloo"], tmp_path, tmp_path / "run", 7)
    # The tiny PPO recipe's budget: 100 steps x 64 completions, evaluated every 50 steps on all 1000 held-out prompts.
    assert trl[trl.index("--num-samples") + 1] == "6400"
    assert trl[trl.index("--eval-every-samples") + 1] == "3200"
    assert trl[trl.index("--eval-prompts") + 1] == "1000"


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_each_estimator_runs_the_recipe_of_rlhf_trl_e2e_algorithm(harness, tmp_path):
    from rlhf_trl.scripts.e2e import recipe_dir, step3_recipe

    recipes = recipe_dir("tiny")
    estimators = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
    for estimator in ("gae", *estimators):
        name = "ppo_gae" if estimator == "gae" else estimator
        algorithm = harness.ALGORITHMS[name]
        assert algorithm.runner == "ours"
        command = harness.run_command(algorithm, tmp_path, tmp_path / "run", 7)
        config, extra = step3_recipe(recipes, None, estimator)
        assert Path(flag(command, "--config")).resolve() == config.resolve()
        assert command[command.index("--config") + 2 :][: len(extra)] == extra
        expected = "ppo.yaml" if estimator == "gae" else f"{estimator}.yaml"
        assert Path(flag(command, "--config")).name == expected
        # Every estimator recipe keeps ppo.yaml's budget: 6400 completions, evaluated every 3200.
        assert harness.recipe_budget(config) == (6400, 3200)
    assert set(estimators) | {"ppo_gae"} <= set(
        harness.make_parser().parse_args(["--base-dir", "b", "--runs-dir", "r"]).algorithms
    )


def test_trl_rows_take_their_recipe_settings(harness, tmp_path):
    grpo = harness.run_command(harness.ALGORITHMS["trl_grpo"], tmp_path, tmp_path / "run", 7)
    settings = harness.recipe_settings(harness.TINY_RECIPE / "grpo.yaml")
    assert float(flag(grpo, "--beta")) == settings["kl_coef"]
    assert float(flag(grpo, "--learning-rate")) == settings["learning_rate"]
    assert float(flag(grpo, "--temperature")) == settings["temperature"]
    assert int(flag(grpo, "--num-generations")) * int(flag(grpo, "--prompts-per-step")) == 64
    assert flag(grpo, "--trainer") == "grpo"
    dr_grpo = harness.run_command(harness.ALGORITHMS["trl_dr_grpo"], tmp_path, tmp_path / "run", 7)
    assert float(flag(dr_grpo, "--beta")) == harness.recipe_settings(harness.TINY_RECIPE / "dr_grpo.yaml")["kl_coef"]
    assert (flag(dr_grpo, "--scale-rewards"), flag(dr_grpo, "--loss-type")) == ("none", "dr_grpo")
    rloo = harness.run_command(harness.ALGORITHMS["trl_rloo"], tmp_path, tmp_path / "run", 7)
    assert "--normalize-advantages" in rloo and flag(rloo, "--trainer") == "rloo"
    # The default-beta rows leave beta to TRL.
    for name in ("trl_grpo_beta0", "trl_rloo_beta005"):
        assert "--beta" not in harness.run_command(harness.ALGORITHMS[name], tmp_path, tmp_path / "run", 7)


def test_report_shows_the_comparison_of_a_run_dir(harness, results, tmp_path):
    from rlhf_trl.reporting.report import build_report

    run_dir = tmp_path / "e2e"
    (run_dir / "step1_sft").mkdir(parents=True)
    (run_dir / "step1_sft" / "run_info.json").write_text(json.dumps({"step_name": "sft", "final_metrics": {}}))
    without = build_report(run_dir)
    assert "Estimator comparison" not in without
    summary = harness.summarise(results, {"gold_score": 0.65, "score": 1.8})
    summary["descriptions"] = {name: harness.ALGORITHMS[name].description for name in ("ppo_gae", "trl_grpo")}
    harness.write_outputs(summary, run_dir / harness.COMPARISON_FOLDER)
    text = build_report(run_dir)
    assert "<h2>Estimator comparison</h2>" in text
    assert "<td>ppo_gae</td>" in text and "0.8000 [0.7000, 0.9000]" in text
    assert "<td>trl_grpo</td>" in text and "<td>1, 2</td>" in text  # reward hacking seeds
    assert text.count('src="data:image/png;base64,') == without.count('src="data:image/png;base64,') + 1


def test_help_and_missing_base_models(harness, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        harness.main(["--help"])
    assert exit_info.value.code == 0
    assert "--algorithms" in capsys.readouterr().out
    assert harness.main(["--base-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "step1_sft: no model" in capsys.readouterr().err
