"""Training curves of one step as PNG files: ``plot_step(output_dir) -> [paths]``.

Reads ``<output_dir>/metrics.jsonl`` (one ``{"step": int, "<metric>": float, ...}`` per logging step) and the step
name from ``run_info.json``. Every step gets its loss curves; the reward step its accuracy and, when
``eval_scores.json`` is present, a histogram of chosen vs rejected scores; PPO its score and gold score on one
figure (reward hacking shows as the two curves parting), KL, entropy, clip fractions and answer length. Figures
whose metrics were not logged are skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

from rlhf_trl.steps import STEP_NAMES  # noqa: E402


class MetricsError(ValueError):
    """A metrics file that is missing, empty or unreadable; the message names the file."""


@dataclass(frozen=True)
class Curve:
    """One metric to draw: its key in metrics.jsonl and its legend label."""

    metric: str
    label: str


@dataclass(frozen=True)
class Figure:
    """A figure of curves sharing an axis; ``right`` curves go on a second y axis (other scale)."""

    file_name: str
    title: str
    y_label: str
    curves: tuple[Curve, ...]
    right: tuple[Curve, ...] = ()
    right_label: str = ""


LOSS_FIGURE = Figure("loss.png", "Loss", "loss", (Curve("loss", "train loss"), Curve("eval_loss", "eval loss")))
FIGURES = {
    "sft": (LOSS_FIGURE,),
    "reward": (
        LOSS_FIGURE,
        Figure(
            "accuracy.png",
            "Preference accuracy",
            "accuracy",
            (Curve("accuracy", "train accuracy"), Curve("eval_accuracy", "eval accuracy")),
        ),
        Figure(
            "margin.png",
            "Chosen - rejected score margin",
            "margin",
            (Curve("margin", "train margin"), Curve("eval_margin", "eval margin")),
        ),
    ),
    "ppo": (
        Figure(
            "score_vs_gold.png",
            "Reward-model score vs gold score (apart = reward hacking)",
            "reward-model score",
            (Curve("objective/score", "RM score"), Curve("objective/rlhf_reward", "RLHF reward (score - KL)")),
            right=(Curve("objective/gold_score", "gold score"), Curve("eval/gold_score", "held-out gold score")),
            right_label="gold score",
        ),
        Figure(
            "kl.png",
            "KL to the reference",
            "KL (nats)",
            (Curve("objective/kl", "KL per answer"), Curve("policy/approx_kl", "approx. KL of the update")),
        ),
        Figure("entropy.png", "Entropy of the policy", "entropy (nats)", (Curve("objective/entropy", "entropy"),)),
        Figure(
            "clip_fraction.png",
            "Clip fractions",
            "fraction clipped",
            (Curve("policy/clip_fraction", "policy"), Curve("value/clip_fraction", "value")),
        ),
        Figure(
            "response_length.png",
            "Answer length",
            "tokens",
            (Curve("response/length", "mean length"),),
            right=(Curve("response/no_eos_fraction", "answers without EOS"),),
            right_label="fraction",
        ),
        Figure(
            "ppo_losses.png",
            "PPO losses",
            "loss",
            (Curve("policy/loss", "policy loss"), Curve("value/loss", "value loss")),
        ),
        Figure(
            "time.png",
            "Time per step (generation usually dominates)",
            "seconds",
            (
                Curve("time/generation_s", "generation"),
                Curve("time/scoring_s", "scoring"),
                Curve("time/training_s", "training"),
            ),
        ),
    ),
}


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl file; raises MetricsError when it is missing, empty or not JSON lines."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: no metrics file (the step writes one per logging step)")
    rows = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise MetricsError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise MetricsError(f"{path}: line {line_number}: expected an object with an integer 'step'")
        rows.append(row)
    if not rows:
        raise MetricsError(f"{path}: the metrics file is empty")
    return rows


def metric_series(rows: list[dict], metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over the rows that logged it as a finite number."""
    steps, values = [], []
    for row in rows:
        value = row.get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(row["step"])
            values.append(float(value))
    return steps, values


def step_name_of(output_dir: Path, rows: list[dict]) -> str:
    """The step name from run_info.json; without it, guessed from the metric names (PPO's are namespaced)."""
    run_info = output_dir / "run_info.json"
    if run_info.is_file():
        name = json.loads(run_info.read_text(encoding="utf-8")).get("step_name")
        if name in STEP_NAMES:
            return name
    keys = {key for row in rows for key in row}
    if any(key.startswith("objective/") for key in keys):
        return "ppo"
    if keys & {"accuracy", "eval_accuracy"}:
        return "reward"
    return "sft"


def _draw(axis, rows: list[dict], curves: tuple[Curve, ...], colors) -> list:
    lines = []
    for curve in curves:
        steps, values = metric_series(rows, curve.metric)
        if steps:
            marker = "o" if len(steps) < 30 else None  # sparse eval points would be invisible as a bare line
            lines += axis.plot(steps, values, label=curve.label, marker=marker, markersize=3, color=next(colors))
    return lines


def draw_figure(rows: list[dict], figure: Figure, path: Path, step_name: str) -> bool:
    """Draw one figure into ``path``; returns False (and writes nothing) when none of its metrics was logged."""
    if not any(metric_series(rows, curve.metric)[0] for curve in figure.curves + figure.right):
        return False
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    fig, axis = plt.subplots(figsize=(7, 4))
    lines = _draw(axis, rows, figure.curves, colors)
    axis.set_xlabel("step")
    axis.set_ylabel(figure.y_label)
    if figure.right and any(metric_series(rows, curve.metric)[0] for curve in figure.right):
        right_axis = axis.twinx()
        lines += _draw(right_axis, rows, figure.right, colors)
        right_axis.set_ylabel(figure.right_label)
    axis.set_title(f"{step_name}: {figure.title}")
    axis.grid(alpha=0.3)
    axis.legend(lines, [line.get_label() for line in lines], loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def draw_score_histogram(scores_path: Path, path: Path) -> bool:
    """Histogram of chosen vs rejected reward scores from ``{"chosen": [...], "rejected": [...]}``."""
    try:
        scores = json.loads(scores_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MetricsError(f"{scores_path}: not valid JSON ({error.msg})") from error
    if not isinstance(scores, dict):
        raise MetricsError(f"{scores_path}: expected {{'chosen': [...], 'rejected': [...]}}")
    chosen, rejected = list(scores.get("chosen") or []), list(scores.get("rejected") or [])
    if not chosen and not rejected:
        return False
    fig, axis = plt.subplots(figsize=(7, 4))
    low, high = min(chosen + rejected), max(chosen + rejected)
    bins = [low + (high - low) * index / 30 for index in range(31)] if high > low else 10
    axis.hist(chosen, bins=bins, alpha=0.6, label=f"chosen (n={len(chosen)})")
    axis.hist(rejected, bins=bins, alpha=0.6, label=f"rejected (n={len(rejected)})")
    axis.set_xlabel("reward-model score")
    axis.set_ylabel("pairs")
    axis.set_title("reward: scores of chosen vs rejected answers")
    axis.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_step(output_dir: str | Path, destination: str | Path | None = None) -> list[Path]:
    """Write the PNG figures of one step's output folder; returns their paths in a fixed order.

    ``destination`` defaults to ``<output_dir>/plots``. Raises MetricsError when metrics.jsonl is missing or empty.
    """
    output_dir = Path(output_dir)
    rows = read_metrics(output_dir / "metrics.jsonl")
    step_name = step_name_of(output_dir, rows)
    destination = Path(destination) if destination is not None else output_dir / "plots"
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    for figure in FIGURES[step_name]:
        path = destination / figure.file_name
        if draw_figure(rows, figure, path, step_name):
            written.append(path)
    scores_path = output_dir / "eval_scores.json"
    if step_name == "reward" and scores_path.is_file():
        path = destination / "score_histogram.png"
        if draw_score_histogram(scores_path, path):
            written.append(path)
    return written
