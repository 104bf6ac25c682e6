"""Step-3 throughput of our PPOTrainer against TRL 1.12's PPOTrainer on the shared CPU workload, side by side.

The workload is ``step3_profile.py``'s ``shared`` one: OPT-shaped 3.4M-parameter actor, critic and reward model
(hidden 64, 2 layers, OPT's 50,272-token vocabulary), 64-token random prompts, answers forced to 64 tokens, 16
prompts per step, one PPO epoch, one mini-batch, fp32. Our side runs in this environment; TRL 1.12 runs
``trl_ppo_peer/run_trl_ppo.py`` with the Python of its own environment (``trl_ppo_peer/setup_venv.sh``).

Every run is a fresh process that builds the workload, runs warm-up steps, then times the measured steps. Runs go one
at a time in rounds (ours, then TRL, then ours, ...), so that a change of machine load hits both sides alike; the
ratio is taken within each round.

    PYTHONPATH=. python benchmarks/step3_vs_trl.py --rounds 3 --warmup-steps 2 --steps 6 --append BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rlhf_trl.reporting.benchmarks_file import publish_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEER_SCRIPT = HERE / "trl_ppo_peer" / "run_trl_ppo.py"
DEFAULT_PEER_PYTHON = REPO / ".venv-trl112" / "bin" / "python"
PEER = "trl-1.12"
TARGET_RATIO = 1.5
PHASES = ("generation", "scoring", "training")
# Our variants: (recompute_rollout_logprobs, max_tokens_per_micro_batch). "default" takes the actor's rollout
# log-probs from generation; "packed" adds padding-free scoring with step3_profile.py's token budget for this
# workload; "recompute" is the older path with a separate actor scoring forward.
VARIANTS = {"default": (False, None), "packed": (False, 512), "recompute": (True, None)}
VARIANT_LABELS = {
    "default": "ours (log-probs from generation, the default)",
    "packed": "ours + packed scoring (max_tokens_per_micro_batch 512)",
    "recompute": "ours, actor scoring forward (recompute_rollout_logprobs)",
    PEER: "TRL 1.12 PPOTrainer",
}
REQUIRED_FIELDS = ("step_s", "warmup_steps", "steps", "batch_size")


class RunError(RuntimeError):
    """A run failed or printed no usable result."""


# ------------------------------------------------------------------------------------------------- one run of ours
def build_our_trainer(variant: str, warmup_steps: int, steps: int, workdir: Path):
    """Our PPOTrainer on the shared workload, set up as step3_profile.build_shared_trainer does, for any step count."""
    import torch
    from datasets import Dataset
    from step3_profile import shared_preset

    from rlhf_trl.bench.workloads import build_models, build_tokenizer, random_prompts
    from rlhf_trl.ppo.config import PPOConfig
    from rlhf_trl.ppo.trainer import PPOTrainer

    recompute, max_tokens = VARIANTS[variant]
    preset = shared_preset()
    actor, critic, reward = build_models(preset, torch.float32, False, workdir)
    tokenizer = build_tokenizer(actor.config)
    total = warmup_steps + steps
    config = PPOConfig(
        output_dir=str(workdir / "ppo"), max_steps=total, per_device_train_batch_size=preset.batch_size,
        max_prompt_length=preset.prompt_length, max_new_tokens=preset.answer_length,
        min_new_tokens=preset.answer_length, bf16=False, use_cpu=True, report_to="none", save_steps=0, seed=0,
        recompute_rollout_logprobs=recompute, max_tokens_per_micro_batch=max_tokens,
    )  # fmt: skip
    prompts = random_prompts(tokenizer, total * preset.batch_size, preset.prompt_length, seed=0)
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=actor, value_model=critic, reward_model=reward,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )  # fmt: skip
    return trainer, preset


def run_ours(variant: str, warmup_steps: int, steps: int, threads: int) -> dict:
    """Time every ``trainer.step()``; the phase split comes from the step's own ``time/*`` metrics."""
    import torch

    torch.set_num_threads(threads)
    trainer, preset = build_our_trainer(variant, warmup_steps, steps, Path(tempfile.mkdtemp(prefix="step3-vs-trl-")))
    step_seconds, phases, lengths = [], [], []
    for _ in range(warmup_steps + steps):
        started = time.perf_counter()
        metrics = trainer.step()
        step_seconds.append(time.perf_counter() - started)
        phases.append({phase: metrics[f"time/{phase}_s"] for phase in PHASES})
        lengths.append(metrics["response/length"])
    return {
        "trainer": "rlhf_trl.ppo.trainer.PPOTrainer",
        "variant": variant,
        "versions": package_versions(("torch", "transformers", "accelerate", "trl", "datasets")),
        "threads": torch.get_num_threads(),
        "batch_size": preset.batch_size,
        "warmup_steps": warmup_steps,
        "steps": steps,
        "step_s": step_seconds,
        "phase_s": phases,
        "response_length": lengths,
    }


def package_versions(names) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


# ------------------------------------------------------------------------------------------ parsing and aggregation
def parse_result(text: str, side: str) -> dict:
    """The JSON object a run printed last on stdout, checked; its samples/s recomputed from the step times."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict):
            break
    else:
        raise RunError(f"{side}: no JSON result on stdout")
    missing = [field for field in REQUIRED_FIELDS if field not in result]
    if missing:
        raise RunError(f"{side}: result lacks {', '.join(missing)}")
    step_seconds = result["step_s"]
    if len(step_seconds) != result["warmup_steps"] + result["steps"] or result["steps"] < 1:
        raise RunError(
            f"{side}: {len(step_seconds)} step times for {result['warmup_steps']} warm-up + {result['steps']} steps"
        )
    if any(not isinstance(seconds, (int, float)) or seconds <= 0 for seconds in step_seconds):
        raise RunError(f"{side}: step times must be positive numbers")
    result["samples_per_s"] = samples_per_second(step_seconds, result["warmup_steps"], result["batch_size"])
    return result


def samples_per_second(step_seconds: list[float], warmup_steps: int, batch_size: int) -> float:
    """Samples/s over the measured steps (those after the warm-up)."""
    measured = step_seconds[warmup_steps:]
    return batch_size * len(measured) / sum(measured)


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "values": list(values)}


def aggregate(rounds: list[dict[str, dict]]) -> dict:
    """Rounds of parsed results keyed by side (our variants and PEER) -> samples/s and per-round ratios to PEER,
    each with mean, min and max, and the mean phase split (seconds per measured step) of our variants."""
    sides = list(rounds[0])
    ours = [side for side in sides if side != PEER]
    summary = {"rounds": len(rounds), "samples_per_s": {}, "ratio": {}, "phase_s": {}, "step_s": {}}
    for side in sides:
        summary["samples_per_s"][side] = spread([round_[side]["samples_per_s"] for round_ in rounds])
        measured = [s for round_ in rounds for s in round_[side]["step_s"][round_[side]["warmup_steps"] :]]
        summary["step_s"][side] = statistics.fmean(measured)
    for side in ours:
        summary["ratio"][side] = spread(
            [round_[side]["samples_per_s"] / round_[PEER]["samples_per_s"] for round_ in rounds]
        )
        steps = [step for round_ in rounds for step in round_[side].get("phase_s", [])[round_[side]["warmup_steps"] :]]
        if steps:
            summary["phase_s"][side] = {phase: statistics.fmean(step[phase] for step in steps) for phase in PHASES}
    return summary


def verdict(summary: dict, target: float = TARGET_RATIO) -> list[str]:
    """One plain sentence per variant: is the target met by the mean ratio, and in every round?"""
    lines = []
    for side, ratio in summary["ratio"].items():
        if ratio["min"] >= target:
            state = f"**met** in every round (lowest {ratio['min']:.2f}x)"
        elif ratio["mean"] >= target:
            state = f"**met on average** but not in every round (lowest {ratio['min']:.2f}x)"
        else:
            state = f"**not met** (best round {ratio['max']:.2f}x)"
        lines.append(
            f"{VARIANT_LABELS.get(side, side)}: {ratio['mean']:.2f}x TRL 1.12 on average; {target}x target {state}."
        )
    return lines


# --------------------------------------------------------------------------------------------------------- report
def format_section(
    summary: dict, rounds: list[dict[str, dict]], command: str, when: datetime.datetime, note: str, our_commit: str
) -> str:
    sides = list(summary["samples_per_s"])
    ours = [side for side in sides if side != PEER]
    first = rounds[0]
    peer, our_any = first[PEER], first[ours[0]]
    versions_ours = ", ".join(f"{name} {value}" for name, value in our_any.get("versions", {}).items())
    versions_peer = ", ".join(f"{name} {value}" for name, value in peer.get("versions", {}).items())
    lines = [
        f"## Step 3 vs TRL 1.12 PPOTrainer (CPU), {when:%Y-%m-%d %H:%M UTC}",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_description()}, {our_any.get('threads', '?')} torch thread(s) per run, one run at a "
        "time" + (f"; {note}" if note else ""),
        "- Workload: OPT-shaped 3.4M-parameter actor, critic and reward model (hidden 64, 2 layers, 50,272-token "
        "vocabulary), 64-token random prompts, answers forced to 64 tokens, 16 prompts per step, 1 PPO epoch, "
        "1 mini-batch, fp32, no evaluation.",
        f"- Rounds: {summary['rounds']}, each {our_any['steps']} measured steps after {our_any['warmup_steps']} "
        f"warm-up steps per run, sides in the order {', '.join(sides)}; every run is a fresh process.",
        f"- Ours: rlhf-trl {our_commit} ({versions_ours})",
        f"- Peer: `trl.experimental.ppo.PPOTrainer` ({versions_peer}), own venv (`benchmarks/trl_ppo_peer/`)",
        "",
        "| round | " + " | ".join(f"{VARIANT_LABELS.get(side, side)} samples/s" for side in sides) + " | "
        + " | ".join(f"ratio {side}" for side in ours) + " |",
        "|---" * (len(sides) + len(ours) + 1) + "|",
    ]  # fmt: skip
    for index, round_ in enumerate(rounds, 1):
        cells = [f"{round_[side]['samples_per_s']:.3f}" for side in sides]
        cells += [f"{round_[side]['samples_per_s'] / round_[PEER]['samples_per_s']:.2f}x" for side in ours]
        lines.append(f"| {index} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| side | samples/s mean (min–max) | s/step | ratio to TRL 1.12 mean (min–max) |",
        "|---|---|---|---|",
    ]
    for side in sides:
        rate = summary["samples_per_s"][side]
        ratio = summary["ratio"].get(side)
        ratio_text = f"{ratio['mean']:.2f}x ({ratio['min']:.2f}–{ratio['max']:.2f})" if ratio else "1"
        lines.append(
            f"| {VARIANT_LABELS.get(side, side)} | {rate['mean']:.3f} ({rate['min']:.3f}–{rate['max']:.3f}) | "
            f"{summary['step_s'][side]:.2f} | {ratio_text} |"
        )
    lines += ["", *(f"- {line}" for line in verdict(summary)), ""]
    if summary["phase_s"]:
        lines += [
            "Where our step's time goes (seconds per measured step, mean over all rounds; from the step's "
            "`time/*` metrics):",
            "",
            "| variant | generation | scoring | training |",
            "|---|---|---|---|",
        ]
        for side, phases in summary["phase_s"].items():
            total = sum(phases.values())
            lines.append(
                f"| {VARIANT_LABELS.get(side, side)} | "
                + " | ".join(f"{phases[phase]:.2f} ({phases[phase] / total:.0%})" for phase in PHASES)
                + " |"
            )
        lines.append("")
    unmatched = peer.get("unmatched", [])
    if unmatched:
        lines += ["Not matched between the two sides:", "", *(f"- {item}" for item in unmatched), ""]
    return "\n".join(lines)


def machine_description() -> str:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = " " + line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()}-core CPU{model} ({platform.machine()})"


def our_commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(unknown commit)"


# ----------------------------------------------------------------------------------------------------------- rounds
def run_side(side: str, options: argparse.Namespace) -> dict:
    """One fresh process for one side; returns its parsed result."""
    counts = [
        "--warmup-steps",
        str(options.warmup_steps),
        "--steps",
        str(options.steps),
        "--threads",
        str(options.threads),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(options.threads), "MKL_NUM_THREADS": str(options.threads)}
    if side == PEER:
        command = [str(options.peer_python), str(PEER_SCRIPT), *counts]
        env.pop("PYTHONPATH", None)  # the peer environment must not see our package
        env["TRL_EXPERIMENTAL_SILENCE"] = "1"
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, *counts]
        env["PYTHONPATH"] = str(REPO)
    process = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=options.run_timeout)
    if process.returncode != 0:
        raise RunError(f"{side}: exit code {process.returncode}\n{process.stderr[-3000:]}")
    return parse_result(process.stdout, side)


def run_rounds(options: argparse.Namespace) -> list[dict[str, dict]]:
    rounds = []
    for index in range(options.rounds):
        round_ = {}
        for side in [*options.variant, PEER]:
            round_[side] = run_side(side, options)
            print(f"round {index + 1}: {side} {round_[side]['samples_per_s']:.3f} samples/s", file=sys.stderr)
        rounds.append(round_)
    return rounds


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one run per side")
    parser.add_argument("--steps", type=int, default=6, help="measured PPO steps per run")
    parser.add_argument("--warmup-steps", type=int, default=2, help="unmeasured PPO steps first in each run")
    parser.add_argument(
        "--variant",
        action="append",
        choices=sorted(VARIANTS),
        help="our variant(s) to run (repeatable); default: default",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (both sides)")
    parser.add_argument(
        "--peer-python", default=str(DEFAULT_PEER_PYTHON), help="Python of the TRL 1.12 environment (setup_venv.sh)"
    )
    parser.add_argument("--run-timeout", type=float, default=3600, help="seconds before one run is given up")
    parser.add_argument("--append", metavar="FILE", help="append the markdown section to this file")
    parser.add_argument("--note", default="", help="a remark on the machine line, e.g. 'shared with other jobs'")
    parser.add_argument("--output-json", help="write every run's result and the summary here")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # one run of ours, as JSON
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = make_parser().parse_args(argv)
    if options.rounds < 1 or options.steps < 1 or options.warmup_steps < 0 or options.threads < 1:
        print("--rounds, --steps and --threads must be >= 1, --warmup-steps >= 0", file=sys.stderr)
        return 2
    if options.worker:
        print(json.dumps(run_ours(options.worker, options.warmup_steps, options.steps, options.threads)))
        return 0
    if not Path(options.peer_python).is_file():
        print(
            f"--peer-python {options.peer_python}: not found; run benchmarks/trl_ppo_peer/setup_venv.sh",
            file=sys.stderr,
        )
        return 2
    options.variant = options.variant or ["default"]
    try:
        rounds = run_rounds(options)
    except (RunError, subprocess.TimeoutExpired) as error:
        print(f"step3_vs_trl: {error}", file=sys.stderr)
        return 1
    summary = aggregate(rounds)
    command = "python benchmarks/step3_vs_trl.py " + shlex.join(argv)
    section = format_section(
        summary, rounds, command, datetime.datetime.now(datetime.timezone.utc), options.note, our_commit()
    )
    publish_section(section, options.append)
    if options.output_json:
        Path(options.output_json).write_text(json.dumps({"rounds": rounds, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
