"""RunLogger: where a PPO run's numbers go. metrics.jsonl and samples.jsonl in the output folder; experiment
trackers named by ``report_to`` (TensorBoard, W&B, Trackio, through Accelerate's trackers) get every logged metric at
the same step, the run configuration, and a table of sample completions; a progress bar shows steps, ETA and the
main metrics."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import sys
from datetime import datetime
from pathlib import Path

from tqdm.auto import tqdm

from rlhf_trl.configs import ConfigError
from rlhf_trl.output_dir import truncate_jsonl
from rlhf_trl.steps import PPO as PPO_STEP

logger = logging.getLogger("rlhf_trl.ppo.trainer")

# report_to name -> the package it needs (installed with the extra of the same name: pip install 'rlhf-trl[wandb]').
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
# Metrics shown on the progress bar and in the log line.
SHOWN = PPO_STEP.progress_metrics
SAMPLE_COLUMNS = ["prompt", "completion", "score", "gold_score"]


def requested_trackers(report_to) -> list[str]:
    """The trackers a ``report_to`` value asks for ('all': those of ours that are installed); raises ConfigError
    (one line) for an unknown name or a tracker whose package is missing."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [str(name) for name in names if str(name) != "none"]
    if "all" in names:
        return [name for name, package in TRACKER_PACKAGES.items() if importlib.util.find_spec(package)]
    for name in names:
        if name not in TRACKER_PACKAGES:
            raise ConfigError(f"report_to {name!r} is not supported by PPO: use one of {tuple(TRACKER_PACKAGES)}")
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"report_to {name} needs the {package} package: pip install 'rlhf-trl[{name}]' (or {package})"
            )
    return names


def logging_dir(args) -> Path:
    """Tracker files: ``logging_dir``, else $TENSORBOARD_LOGGING_DIR, else output_dir/runs (as Trainer)."""
    return Path(args.logging_dir or os.environ.get("TENSORBOARD_LOGGING_DIR") or Path(args.output_dir) / "runs")


def run_name(args) -> str:
    """The run's name in every tracker: ``run_name``, else date and host as Trainer names its TensorBoard runs."""
    return args.run_name or f"{datetime.now():%b%d_%H-%M-%S}_{socket.gethostname()}"


def build_trackers(args) -> list | None:
    """Accelerate tracker objects for ``Accelerator(log_with=...)``: named by run_name, files under logging_dir,
    W&B and Trackio runs in the ``project`` project."""
    from accelerate.tracking import TensorBoardTracker, TrackioTracker, WandBTracker

    name, directory = run_name(args), logging_dir(args)
    trackers = []
    for tracker in requested_trackers(args.report_to):
        if tracker == "tensorboard":
            trackers.append(TensorBoardTracker(name, directory))
        elif tracker == "wandb":
            directory.mkdir(parents=True, exist_ok=True)
            trackers.append(WandBTracker(args.project, name=name, dir=str(directory)))
        elif tracker == "trackio":
            trackers.append(TrackioTracker(args.project, name=name))
    return trackers or None  # None: Accelerate warns about an empty list


def run_config(args) -> dict:
    """The configuration as scalars trackers accept (lists and dicts as JSON text); no Hub token."""
    config = {}
    for key, value in args.to_dict().items():
        if key == "hub_token":
            continue
        value = getattr(value, "value", value)
        config[key] = value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return config


class RunLogger:
    """Writes what a PPO run logs to its output folder and trackers and draws the progress bar; only the main process
    writes. ``history`` holds every record written to metrics.jsonl by this process.

    Args:
        accelerator: the trainer's Accelerator, built with ``log_with=build_trackers(args)``.
        args: the PPOConfig.
        total_steps: PPO steps of the run (the progress bar's length).
    """

    def __init__(self, accelerator, args, total_steps: int):
        self.accelerator = accelerator
        self.args = args
        self.total_steps = total_steps
        self.output_dir = Path(args.output_dir)
        self.history: list[dict] = []
        self.started = False
        self.progress = None
        self.shows_progress = False

    def _start(self, step: int) -> None:
        """Start tracker runs and the bar at the first step (resumed runs start where the checkpoint was)."""
        self.started = True
        if self.accelerator.log_with:
            self.accelerator.init_trackers(self.args.project, config=run_config(self.args))
            logger.info("trackers: %s (files under %s)", ", ".join(self.tracker_names()), logging_dir(self.args))
        terminal = sys.stderr.isatty()
        self.shows_progress = terminal and not self.args.disable_tqdm and self.accelerator.is_main_process
        self.progress = tqdm(
            total=self.total_steps, initial=step, desc="PPO", unit="step", disable=not self.shows_progress
        )

    def tracker_names(self) -> list[str]:
        return [tracker.name for tracker in self.accelerator.trackers]

    def advance(self, step: int, metrics: dict[str, float]) -> None:
        """One PPO step done: move the bar and show the main metrics."""
        if not self.started:
            self._start(step - 1)
        self.progress.update(step - self.progress.n)
        shown = {key.split("/")[-1]: f"{metrics[key]:.3g}" for key in SHOWN if key in metrics}
        self.progress.set_postfix(shown, refresh=False)

    def log_step(self, step: int, metrics: dict[str, float], rollout) -> None:
        """The metrics of PPO step ``step`` (rounded) to metrics.jsonl, the first num_samples_to_log samples of its
        rollout to samples.jsonl, both to the trackers, and a log line."""
        record = {"step": step, **{key: round(float(value), 6) for key, value in metrics.items()}}
        self.history.append(record)
        samples = [
            {
                "step": step,
                "prompt": rollout.prompts[index],
                "completion": rollout.completions[index],
                "score": float(rollout.raw_scores[index]),
                "gold_score": None if rollout.gold_scores is None else float(rollout.gold_scores[index]),
            }
            for index in range(min(self.args.num_samples_to_log, len(rollout)))
        ]
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with (self.output_dir / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            with (self.output_dir / "samples.jsonl").open("a") as handle:
                handle.writelines(json.dumps(sample) + "\n" for sample in samples)
        # Trackers see exactly the rounded values of metrics.jsonl, at the same step.
        self.log(record, samples)
        if self.accelerator.is_main_process:
            logger.info(
                "step %d/%d  %s",
                step,
                self.total_steps,
                "  ".join(f"{key.split('/')[-1]}={metrics[key]:.3f}" for key in SHOWN if key in metrics),
            )

    def truncate(self, step: int) -> None:
        """Drop log lines written after ``step`` (a resumed checkpoint's): the logs read like an uninterrupted run."""
        if not self.accelerator.is_main_process:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_jsonl(self.output_dir / name, step)

    def log(self, record: dict, samples: list[dict]) -> None:
        """A metrics.jsonl record (its ``step`` is the tracker step) and the sample completions of that step."""
        step = record["step"]
        if not self.started:
            self._start(step - 1)
        if not self.accelerator.log_with:
            return
        self.accelerator.log({key: value for key, value in record.items() if key != "step"}, step=step)
        if not self.accelerator.is_main_process or not samples:
            return
        rows = [[sample[column] for column in SAMPLE_COLUMNS] for sample in samples]
        for tracker in self.accelerator.trackers:
            if tracker.name == "wandb":
                tracker.log_table("samples", columns=SAMPLE_COLUMNS, data=rows, step=step)
            elif tracker.name == "tensorboard":
                tracker.writer.add_text("samples", markdown_table(rows), global_step=step)
                tracker.writer.flush()

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.started and self.accelerator.log_with:
            self.accelerator.end_training()


def markdown_table(rows: list[list]) -> str:
    """Sample rows as a Markdown table (TensorBoard's text tab renders it)."""

    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4f}"
        if not isinstance(value, str):
            value = json.dumps(value)  # conversational prompts and completions
        return value.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
