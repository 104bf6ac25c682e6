"""Compare advantage estimators on the tiny task: our ``rlhf-trl ppo`` (one entry per estimator) and TRL's own
GRPOTrainer / RLOOTrainer (benchmarks/trl_reference), all from the same step-1 SFT model against the same step-2
reward model, with the sample budget of the tiny PPO recipe, over several seeds.

Each run writes to ``<runs-dir>/<algorithm>/seed<seed>/output/``, next to its ``log.txt`` and a ``harness.json``
(command, process wall time, peak resident memory of the process tree, exit code); finished runs are kept and not
rerun. The runs' own
files are then read (ours: metrics.jsonl and run_info.json; TRL: result.json) into held-out gold and reward-model
score curves against samples and training time, and summarised as ``summary.json``, ``summary.md`` (a Markdown
table) and ``curves.png`` (mean over seeds with a min/max band).

    python benchmarks/compare_estimators.py --base-dir /tmp/base --runs-dir /tmp/compare \\
        --algorithms ppo_gae grpo rloo trl_grpo trl_rloo --seeds 42 7 1 --into-run-dir /tmp/base

Our rows run ``rlhf-trl ppo`` with the recipe ``rlhf-trl e2e --algorithm NAME`` runs (recipes/tiny/<name>.yaml,
ppo.yaml for gae); a TRL row takes its settings from the recipe of the estimator it mirrors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPOSITORY / "rlhf_trl" / "recipes" / "tiny"
PPO_RECIPE = TINY_RECIPE / "ppo.yaml"
TRL_REFERENCE = REPOSITORY / "benchmarks" / "trl_reference" / "run_trl_reference.py"
# Where --into-run-dir puts summary.json, summary.md and curves.png (shown by ``rlhf-trl report RUN_DIR``).
COMPARISON_FOLDER = "comparison"


@dataclass(frozen=True)
class Algorithm:
    """One row of the comparison. ``runner`` is "ours" (``rlhf-trl ppo``) or "trl"
    (benchmarks/trl_reference/run_trl_reference.py); ``estimator`` names the tiny recipe the run follows, chosen as
    ``rlhf-trl e2e --algorithm ESTIMATOR`` chooses it (recipes/tiny/<estimator>.yaml, else ppo.yaml); ``options``
    are extra command-line flags of the runner. A TRL run takes that recipe's sampling, batch, optimiser and budget
    settings, and its ``kl_coef`` as ``--beta`` when ``match_kl`` (else TRL's default beta)."""

    name: str
    runner: str
    options: tuple[str, ...]
    description: str
    estimator: str = "gae"
    match_kl: bool = True


ALGORITHMS = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm("ppo_gae", "ours", (), "ours: PPO with critic and GAE (ppo.yaml)", "gae"),
        Algorithm("grpo", "ours", (), "ours: GRPO (grpo.yaml)", "grpo"),
        Algorithm("dr_grpo", "ours", (), "ours: Dr. GRPO (dr_grpo.yaml)", "dr_grpo"),
        Algorithm("rloo", "ours", (), "ours: RLOO (rloo.yaml)", "rloo"),
        Algorithm("reinforce_pp", "ours", (), "ours: REINFORCE++ (reinforce_pp.yaml)", "reinforce_pp"),
        Algorithm(
            "reinforce_pp_baseline",
            "ours",
            (),
            "ours: REINFORCE++ with a group baseline (reinforce_pp_baseline.yaml)",
            "reinforce_pp_baseline",
        ),
        Algorithm(
            "trl_grpo",
            "trl",
            ("--trainer", "grpo"),
            "TRL GRPOTrainer with grpo.yaml's settings: scale_rewards=group, loss dapo, k3 KL in the loss, beta = "
            "kl_coef",
            "grpo",
        ),
        Algorithm(
            "trl_dr_grpo",
            "trl",
            ("--trainer", "grpo", "--scale-rewards", "none", "--loss-type", "dr_grpo"),
            "TRL GRPOTrainer with dr_grpo.yaml's settings: scale_rewards=none, loss dr_grpo, beta = kl_coef",
            "dr_grpo",
        ),
        Algorithm(
            "trl_rloo",
            "trl",
            ("--trainer", "rloo", "--normalize-advantages"),
            "TRL RLOOTrainer with rloo.yaml's settings: k1 KL in the reward, beta = kl_coef, advantages normalised",
            "rloo",
        ),
        Algorithm(
            "trl_grpo_beta0",
            "trl",
            ("--trainer", "grpo"),
            "TRL GRPOTrainer as trl_grpo with TRL's default beta (0: no KL)",
            "grpo",
            match_kl=False,
        ),
        Algorithm(
            "trl_rloo_beta005",
            "trl",
            ("--trainer", "rloo", "--normalize-advantages"),
            "TRL RLOOTrainer as trl_rloo with TRL's default beta (0.05)",
            "rloo",
            match_kl=False,
        ),
    )
}


@dataclass
class RunResult:
    """One algorithm x seed. ``curve``: [{samples, train_time_s, gold_score, score}] of held-out evaluations."""

    algorithm: str
    seed: int
    samples: int
    gold_score: float
    score: float
    train_time_s: float
    wall_time_s: float | None
    peak_rss_mib: float | None
    curve: list[dict]


# Running


def recipe_file(estimator: str) -> tuple[Path, list[str]]:
    """The tiny step-3 recipe and extra flags that ``rlhf-trl e2e --algorithm ESTIMATOR`` runs."""
    from rlhf_trl.scripts.e2e import step3_recipe

    return step3_recipe(TINY_RECIPE, None, estimator)


def recipe_settings(recipe: Path) -> dict:
    import yaml

    return yaml.safe_load(recipe.read_text())


def recipe_budget(recipe: Path = PPO_RECIPE) -> tuple[int, int]:
    """(completions trained on in all, completions between evaluations) of a tiny step-3 recipe on one process:
    per_device_train_batch_size counts prompts, each sampled num_generations times."""
    settings = recipe_settings(recipe)
    per_step = int(settings["per_device_train_batch_size"]) * int(settings.get("num_generations", 1))
    return int(settings["max_steps"]) * per_step, int(settings["eval_steps"]) * per_step


def trl_recipe_options(recipe: Path, match_kl: bool) -> list[str]:
    """run_trl_reference.py flags that follow a tiny step-3 recipe: group split, mini-batches, epochs, learning
    rate, temperature, completion length, budget, evaluation schedule and prompts, and kl_coef as beta."""
    settings = recipe_settings(recipe)
    samples, eval_every = recipe_budget(recipe)
    options = [
        "--num-samples", str(samples), "--eval-every-samples", str(eval_every),
        "--eval-prompts", str(settings["eval_prompts_limit"]),
        "--prompts-per-step", str(settings["per_device_train_batch_size"]),
        "--num-generations", str(settings.get("num_generations", 1)),
        "--mini-batches", str(settings["num_mini_batches"]), "--epochs", str(settings["num_ppo_epochs"]),
        "--learning-rate", str(settings["learning_rate"]), "--temperature", str(settings["temperature"]),
        "--max-new-tokens", str(settings["max_new_tokens"]),
    ]  # fmt: skip
    if match_kl:
        options += ["--beta", str(settings["kl_coef"])]
    return options


def run_command(algorithm: Algorithm, base_dir: Path, run_dir: Path, seed: int) -> list[str]:
    sft, reward, output = str(base_dir / "step1_sft"), str(base_dir / "step2_reward"), str(run_dir / "output")
    recipe, recipe_flags = recipe_file(algorithm.estimator)
    if algorithm.runner == "ours":
        return [
            sys.executable, "-m", "rlhf_trl.cli", "ppo", "--config", str(recipe), *recipe_flags,
            "--model_name_or_path", sft, "--reward_model_path", reward, "--output_dir", output,
            "--seed", str(seed),
            # Every step logged, so the training time up to each evaluation is the sum of the steps' time/*.
            "--logging_steps", "1", "--save_strategy", "no",
            *algorithm.options,
        ]  # fmt: skip
    if algorithm.runner == "trl":
        return [
            sys.executable, str(TRL_REFERENCE), "--sft-model", sft, "--reward-model", reward,
            "--output-dir", output, "--seed", str(seed), "--skip-initial-eval",
            *trl_recipe_options(recipe, algorithm.match_kl), *algorithm.options,
        ]  # fmt: skip
    raise ValueError(f"algorithm {algorithm.name}: unknown runner {algorithm.runner!r} (ours or trl)")


def run_one(algorithm: Algorithm, base_dir: Path, run_dir: Path, seed: int) -> dict:
    """Run one algorithm x seed in a child process; returns (and writes to harness.json) its wall time and the peak
    resident memory of the largest process of its tree (wait4's ru_maxrss)."""
    command = run_command(algorithm, base_dir, run_dir, seed)
    # A run starts afresh: the output of an earlier (failed or rerun) attempt would stop rlhf-trl ppo.
    shutil.rmtree(run_dir / "output", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    with (run_dir / "log.txt").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY, env=environment)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    record = {
        "command": command,
        "returncode": process.returncode,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }
    (run_dir / "harness.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def finished(run_dir: Path) -> bool:
    path = run_dir / "harness.json"
    return path.is_file() and json.loads(path.read_text()).get("returncode") == 0


# Reading the runs' files


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def parse_ours(run_dir: Path, algorithm: str, seed: int) -> RunResult:
    """An ``rlhf-trl ppo`` run logged at every step: the training time is the running sum of time/generation_s,
    time/scoring_s and time/training_s; the curve holds the steps with eval/* metrics."""
    records = sorted(read_jsonl(run_dir / "metrics.jsonl"), key=lambda record: record["step"])
    steps = [record["step"] for record in records]
    if steps != list(range(1, len(steps) + 1)):
        raise ValueError(f"{run_dir}/metrics.jsonl does not log every step (run with --logging_steps 1)")
    train_time, curve = 0.0, []
    for record in records:
        train_time += record["time/generation_s"] + record["time/scoring_s"] + record["time/training_s"]
        if "eval/gold_score" in record:
            curve.append(
                {
                    "samples": int(record["episodes"]),
                    "train_time_s": round(train_time, 4),
                    "gold_score": record["eval/gold_score"],
                    "score": record["eval/score"],
                }
            )
    final = json.loads((run_dir / "run_info.json").read_text())["final_metrics"]
    return RunResult(
        algorithm=algorithm,
        seed=seed,
        samples=int(records[-1]["episodes"]),
        gold_score=final["eval/gold_score"],
        score=final["eval/score"],
        train_time_s=round(train_time, 2),
        wall_time_s=None,
        peak_rss_mib=None,
        curve=curve,
    )


def parse_trl(run_dir: Path, algorithm: str, seed: int) -> RunResult:
    result = json.loads((run_dir / "result.json").read_text())
    return RunResult(
        algorithm=algorithm,
        seed=seed,
        samples=result["samples"],
        gold_score=result["eval_gold_score"],
        score=result["eval_score"],
        train_time_s=result["train_time_s"],
        wall_time_s=None,
        peak_rss_mib=None,
        curve=result["curve"],
    )


PARSERS = {"ours": parse_ours, "trl": parse_trl}


def parse_run(run_dir: Path, algorithm: Algorithm, seed: int) -> RunResult:
    """A finished run's result; wall time and peak memory from harness.json when the harness ran it."""
    result = PARSERS[algorithm.runner](run_dir / "output", algorithm.name, seed)
    harness = run_dir / "harness.json"
    if harness.is_file():
        record = json.loads(harness.read_text())
        result.wall_time_s, result.peak_rss_mib = record["wall_time_s"], record["peak_rss_mib"]
    return result


# Summarising


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def summarise(results: list[RunResult], baseline: dict | None) -> dict:
    """Per algorithm (in first-seen order): mean/min/max over seeds of the final numbers, the mean curve with its
    band, and the change against the SFT model (``baseline``: {gold_score, score}) where given. A run counts as
    reward hacking when its held-out reward score rose above the SFT model's while its gold score fell below."""
    by_algorithm: dict[str, list[RunResult]] = {}
    for result in results:
        by_algorithm.setdefault(result.algorithm, []).append(result)
    summary = {"baseline": baseline, "algorithms": {}}
    for name, runs in by_algorithm.items():
        entry = {
            "seeds": [run.seed for run in runs],
            "samples": sorted({run.samples for run in runs}),
            "per_seed": [vars(run) for run in runs],
        }
        for field in ("gold_score", "score", "train_time_s", "wall_time_s", "peak_rss_mib"):
            values = [getattr(run, field) for run in runs if getattr(run, field) is not None]
            entry[field] = spread(values) if values else None
        if baseline is not None:
            entry["gold_change"] = entry["gold_score"]["mean"] - baseline["gold_score"]
            entry["score_change"] = entry["score"]["mean"] - baseline["score"]
            entry["hacking_seeds"] = [
                run.seed for run in runs if run.score > baseline["score"] and run.gold_score < baseline["gold_score"]
            ]
        entry["curve"] = mean_curve(runs, baseline)
        summary["algorithms"][name] = entry
    return summary


def mean_curve(runs: list[RunResult], baseline: dict | None) -> list[dict]:
    """Curve points at the sample counts every seed evaluated at, preceded by the SFT model at 0 samples."""
    common = set.intersection(*({point["samples"] for point in run.curve} for run in runs))
    points = []
    if baseline is not None:
        zero = {"mean": 0.0, "min": 0.0, "max": 0.0}
        points.append(
            {
                "samples": 0,
                "train_time_s": zero,
                "gold_score": {
                    "mean": baseline["gold_score"],
                    "min": baseline["gold_score"],
                    "max": baseline["gold_score"],
                },
                "score": {"mean": baseline["score"], "min": baseline["score"], "max": baseline["score"]},
            }
        )
    for samples in sorted(common):
        at = [next(point for point in run.curve if point["samples"] == samples) for run in runs]
        points.append(
            {
                "samples": samples,
                **{key: spread([point[key] for point in at]) for key in ("train_time_s", "gold_score", "score")},
            }
        )
    return points


def format_spread(value: dict | None, digits: int) -> str:
    if value is None:
        return "-"
    if len({value["min"], value["max"]}) == 1:
        return f"{value['mean']:.{digits}f}"
    return f"{value['mean']:.{digits}f} [{value['min']:.{digits}f}, {value['max']:.{digits}f}]"


def markdown_table(summary: dict) -> str:
    """Two tables: per algorithm (mean [min, max] over seeds), and per seed."""
    baseline = summary["baseline"]
    lines = []
    if baseline is not None:
        lines.append(
            f"SFT model (start of every run): held-out gold {baseline['gold_score']:.4f}, "
            f"reward score {baseline['score']:.4f}.\n"
        )
    lines += [
        "| algorithm | seeds | samples | held-out gold | gold − SFT | held-out reward score | reward − SFT "
        "| train time (s) | process wall (s) | peak RSS (MiB) | reward hacking (seeds) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary["algorithms"].items():
        change = (
            (
                f"{entry['gold_change']:+.4f}",
                f"{entry['score_change']:+.3f}",
                ", ".join(map(str, entry["hacking_seeds"])) or "none",
            )
            if baseline is not None
            else ("-", "-", "-")
        )
        lines.append(
            f"| {name} | {len(entry['seeds'])} | {'/'.join(map(str, entry['samples']))} "
            f"| {format_spread(entry['gold_score'], 4)} | {change[0]} "
            f"| {format_spread(entry['score'], 3)} | {change[1]} "
            f"| {format_spread(entry['train_time_s'], 1)} | {format_spread(entry['wall_time_s'], 1)} "
            f"| {format_spread(entry['peak_rss_mib'], 0)} | {change[2]} |"
        )
    lines += [
        "",
        "| algorithm | seed | held-out gold | held-out reward score | train time (s) | process wall (s) "
        "| peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary["algorithms"].items():
        for run in entry["per_seed"]:
            wall = "-" if run["wall_time_s"] is None else f"{run['wall_time_s']:.1f}"
            memory = "-" if run["peak_rss_mib"] is None else f"{run['peak_rss_mib']:.0f}"
            lines.append(
                f"| {name} | {run['seed']} | {run['gold_score']:.4f} | {run['score']:.3f} "
                f"| {run['train_time_s']:.1f} | {wall} | {memory} |"
            )
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """Held-out gold and reward score against samples and against training time: mean over seeds, min/max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(10, 7), sharey="row")
    panels = [
        (axes[0][0], "samples", "gold_score"),
        (axes[0][1], "train_time_s", "gold_score"),
        (axes[1][0], "samples", "score"),
        (axes[1][1], "train_time_s", "score"),
    ]
    labels = {"samples": "completions trained on", "train_time_s": "training time (s)"}
    labels |= {"gold_score": "held-out gold score", "score": "held-out reward-model score"}
    for axis, x_key, y_key in panels:
        for name, entry in summary["algorithms"].items():
            curve = entry["curve"]
            if not curve:
                continue
            x = [point[x_key] if x_key == "samples" else point[x_key]["mean"] for point in curve]
            mean = [point[y_key]["mean"] for point in curve]
            # TRL's trainers dashed, ours solid: with more than ten rows the colours repeat.
            style = "--" if name in ALGORITHMS and ALGORITHMS[name].runner == "trl" else "-"
            (line,) = axis.plot(x, mean, style, marker="o", markersize=3, label=name)
            low, high = [point[y_key]["min"] for point in curve], [point[y_key]["max"] for point in curve]
            axis.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
        axis.set_xlabel(labels[x_key])
        axis.set_ylabel(labels[y_key])
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle("Tiny task: held-out greedy answers (mean over seeds, band = min/max)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def sft_baseline(base_dir: Path) -> dict:
    """Held-out gold and reward score of the SFT model, evaluated as every run's final model is."""
    sys.path.insert(0, str(TRL_REFERENCE.parent))
    from run_trl_reference import RewardModelReward, held_out_scores

    settings = recipe_settings(PPO_RECIPE)
    reward = RewardModelReward(str(base_dir / "step2_reward"))
    return held_out_scores(
        str(base_dir / "step1_sft"), reward, int(settings["eval_prompts_limit"]), int(settings["max_new_tokens"])
    )


def write_outputs(summary: dict, runs_dir: Path) -> None:
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (runs_dir / "summary.md").write_text(markdown_table(summary))
    plot(summary, runs_dir / "curves.png")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-dir", required=True, help="Folder with step1_sft and step2_reward (rlhf-trl e2e).")
    parser.add_argument("--runs-dir", required=True, help="Where each run and the summary files go.")
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=[
            "ppo_gae",
            "grpo",
            "dr_grpo",
            "rloo",
            "reinforce_pp",
            "reinforce_pp_baseline",
            "trl_grpo",
            "trl_rloo",
        ],
        choices=sorted(ALGORITHMS),
        help="Rows of the comparison.",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 7, 1])
    parser.add_argument("--rerun", action="store_true", help="Run again the runs that finished before.")
    parser.add_argument("--no-run", action="store_true", help="Only read the finished runs and summarise them.")
    parser.add_argument(
        "--into-run-dir",
        default=None,
        help=f"Also write the summary files into RUN_DIR/{COMPARISON_FOLDER}/ (e.g. the e2e run of --base-dir), "
        "where `rlhf-trl report RUN_DIR` shows them.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = make_parser().parse_args(argv)
    base_dir, runs_dir = Path(arguments.base_dir).resolve(), Path(arguments.runs_dir).resolve()
    for step in ("step1_sft", "step2_reward"):
        if not (base_dir / step / "config.json").is_file():
            print(
                f"compare_estimators: {base_dir / step}: no model (run rlhf-trl e2e --step 1, then 2)", file=sys.stderr
            )
            return 2
    results = []
    for name in arguments.algorithms:
        algorithm = ALGORITHMS[name]
        for seed in arguments.seeds:
            run_dir = runs_dir / name / f"seed{seed}"
            if not arguments.no_run and (arguments.rerun or not finished(run_dir)):
                print(f"==> {name} seed {seed}", flush=True)
                record = run_one(algorithm, base_dir, run_dir, seed)
                if record["returncode"] != 0:
                    print(f"compare_estimators: {name} seed {seed} failed; see {run_dir / 'log.txt'}", file=sys.stderr)
                    return 1
            results.append(parse_run(run_dir, algorithm, seed))
    summary = summarise(results, sft_baseline(base_dir))
    summary["command"] = " ".join(["python", "benchmarks/compare_estimators.py", *(argv or sys.argv[1:])])
    summary["descriptions"] = {name: ALGORITHMS[name].description for name in arguments.algorithms}
    write_outputs(summary, runs_dir)
    if arguments.into_run_dir is not None:
        write_outputs(summary, Path(arguments.into_run_dir) / COMPARISON_FOLDER)
    print(markdown_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
