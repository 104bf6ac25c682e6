"""All three steps with one command (DS-Chat's train.py): each step runs through ``accelerate launch`` with the
config of the deployment type, logs to ``<output_dir>/stepN.log``, and feeds its checkpoint to the next step.

    rlhf-trl e2e --recipe tiny --deployment-type cpu --output-dir outputs/demo
    rlhf-trl e2e --recipe tiny --algorithm grpo --output-dir outputs/grpo
    rlhf-trl e2e --actor-model facebook/opt-1.3b --reward-model facebook/opt-350m --recipe opt-1.3b \
        --deployment-type single_node --actor-zero-stage 2 --reward-zero-stage 2 --output-dir outputs/opt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from rlhf_trl.launch import DEPLOYMENT_TYPES, ZERO_STAGES
from rlhf_trl.models import TINY_BASE
from rlhf_trl.output_dir import (
    OutputDirError,
    OutputLock,
    disk_error_line,
    latest_complete_checkpoint,
    move_aside,
    visible_contents,
)
from rlhf_trl.ppo.estimators import ADVANTAGE_ESTIMATORS
from rlhf_trl.redaction import redact_argv
from rlhf_trl.scripts.step_progress import MetricsFollower, progress_line
from rlhf_trl.steps import BY_NUMBER, STEP_NUMBERS, STEPS, Step

# Output folder of each step by number (the steps are described in rlhf_trl.steps).
STEP_DIRS = {step.number: step.folder for step in STEPS}
# Where step 2 starts: the recipe's base model (DS-Chat), or step 1's output (InstructGPT).
REWARD_INITS = ("recipe", "sft")
# How often a running step's metrics.jsonl is read for new records.
PROGRESS_POLL_S = 1.0


class _OneLineErrors(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; a bad flag here is reported as one ``error:`` line."""

    def error(self, message):
        raise SystemExit(f"error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="rlhf-trl e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="tiny", help="shipped recipe (rlhf-trl recipes) or a folder")
    parser.add_argument("--variant", default=None, help="recipe variant, e.g. 8bit-lora: uses sft-8bit-lora.yaml etc.")
    parser.add_argument("--actor-model", default=None, help="base model of steps 1 and 3 (default: the recipe's)")
    parser.add_argument("--reward-model", default=None, help="base model of step 2 (default: the recipe's)")
    parser.add_argument(
        "--reward-init",
        default="recipe",
        choices=REWARD_INITS,
        help="where step 2 starts: the recipe's (or --reward-model) base (DS-Chat), or step 1's output (InstructGPT)",
    )
    parser.add_argument("--deployment-type", default="cpu", choices=DEPLOYMENT_TYPES)
    parser.add_argument("--step", type=int, nargs="+", default=list(STEP_NUMBERS), choices=STEP_NUMBERS)
    parser.add_argument("--actor-zero-stage", type=int, default=None, choices=ZERO_STAGES)
    parser.add_argument("--reward-zero-stage", type=int, default=None, choices=ZERO_STAGES)
    parser.add_argument(
        "--accelerate_config",
        "--accelerate-config",
        default=None,
        help="accelerate config for every step, shipped name (rlhf-trl recipes) or file (default: the deployment's)",
    )
    parser.add_argument("--num-processes", type=int, default=None, help="processes per node (default: config's)")
    parser.add_argument("--output-dir", default="outputs/e2e")
    parser.add_argument(
        "--overwrite_output_dir",
        "--overwrite-output-dir",
        action="store_true",
        help="move the earlier results of the chosen steps aside (to <output-dir>.previous-<time>) and start afresh",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an earlier run in --output-dir: skip the steps that finished (run_info.json present), resume "
        "an unfinished step from its last complete checkpoint, or restart it",
    )
    parser.add_argument("--samples", type=int, default=4, help="sample conversations printed at the end")
    parser.add_argument(
        "--algorithm",
        default=None,
        choices=ADVANTAGE_ESTIMATORS,
        help="step 3's advantage estimator: the recipe's <algorithm>.yaml where it has one (e.g. grpo.yaml), else its "
        "ppo.yaml with --advantage_estimator <algorithm> (default: ppo.yaml as it is)",
    )
    return parser


def recipe_file(step: int, variant: str | None) -> str:
    name = BY_NUMBER[step].recipe
    return name if not variant else name.replace(".yaml", f"-{variant}.yaml")


def step3_recipe(recipe: Path, variant: str | None, algorithm: str | None) -> tuple[Path, list[str]]:
    """Step 3's config file and the flags added to it for ``--algorithm``: the recipe's own ``<algorithm>.yaml``
    (settings tuned for that estimator), else ppo.yaml with ``--advantage_estimator <algorithm>``."""
    if algorithm is not None and (recipe / f"{algorithm}.yaml").exists():
        return recipe / f"{algorithm}.yaml", []
    extra = ["--advantage_estimator", algorithm] if algorithm is not None else []
    return recipe / recipe_file(3, variant), extra


def recipe_dir(recipe: str, variant: str | None = None) -> Path:
    from rlhf_trl import resources

    try:
        path = resources.recipe_dir(recipe)
    except resources.ResourceNotFound as error:
        raise SystemExit(f"error: {error}") from None
    missing = [recipe_file(step, variant) for step in STEP_NUMBERS if not (path / recipe_file(step, variant)).exists()]
    if missing:
        raise SystemExit(f"error: recipe {recipe!r} is incomplete (missing {', '.join(missing)})")
    return path


def step_arguments(step: int, args, recipe: Path, output: Path) -> list[str]:
    configs = {number: recipe / recipe_file(number, args.variant) for number in STEP_NUMBERS}
    configs[3], algorithm_flags = step3_recipe(recipe, args.variant, args.algorithm)
    arguments = ["--config", str(configs[step]), "--output_dir", str(output / BY_NUMBER[step].folder)]
    step_dir = output / BY_NUMBER[step].folder
    if args.resume and visible_contents(step_dir):
        # An unfinished step: continue from its last complete checkpoint, or start it again with what it left
        # moved aside.
        has_checkpoint = latest_complete_checkpoint(step_dir) is not None
        arguments += ["--resume_from_checkpoint", "true"] if has_checkpoint else ["--overwrite_output_dir"]
    # Every step knows which datasets the others read, so data_split cuts only the datasets steps share.
    arguments += ["--pipeline_configs", *(str(configs[other]) for other in STEP_NUMBERS)]
    if step == 1 and args.actor_model:
        arguments += ["--model_name_or_path", args.actor_model]
    if step == 2 and args.reward_init == "sft":
        arguments += ["--model_name_or_path", str(output / BY_NUMBER[1].folder)]
    elif step == 2 and args.reward_model:
        arguments += ["--model_name_or_path", args.reward_model]
    if step == 3:
        arguments += algorithm_flags
        arguments += ["--model_name_or_path", str(output / BY_NUMBER[1].folder)]
        arguments += ["--reward_model_path", str(output / BY_NUMBER[2].folder)]
    return arguments


def is_error_line(line: str) -> bool:
    """Lines of a step's output echoed while it runs: its one-line errors and tracebacks."""
    return line.startswith(("error:", "Traceback")) or "Error" in line[:40]


def run_logged(command: list[str], log_path: Path, step: Step | None = None, metrics_path: Path | None = None) -> int:
    """Run a step, writing everything it prints to its log (after what earlier attempts wrote) and echoing its
    errors. Its progress comes from ``metrics_path`` (the step's metrics.jsonl): one line per new record, read every
    ``PROGRESS_POLL_S`` seconds while it runs and once more when it ends."""
    follower = MetricsFollower(metrics_path) if step is not None and metrics_path is not None else None

    def print_progress() -> None:
        for record in follower.new_records() if follower is not None else []:
            line = progress_line(step, record)
            if line is not None:
                print("   ", line, flush=True)

    with log_path.open("a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

        def copy_output() -> None:
            for line in process.stdout:
                log.write(line)
                if is_error_line(line):
                    print("   ", line.rstrip(), flush=True)

        reader = threading.Thread(target=copy_output, daemon=True)
        reader.start()
        while reader.is_alive():
            print_progress()
            reader.join(PROGRESS_POLL_S)
        code = process.wait()
        print_progress()
        return code


def key_metric(step: int, step_dir: Path) -> tuple[str, float | None]:
    info_path = step_dir / "run_info.json"
    if not info_path.exists():
        return "-", None
    metrics = json.loads(info_path.read_text())["final_metrics"]
    for name, label in BY_NUMBER[step].key_metrics:
        if name in metrics:
            return label, float(metrics[name])
    return "-", None


def gold_progress(output: Path) -> dict[str, float]:
    """Held-out gold score of the base, SFT and PPO models, where the steps measured one."""
    found = {}
    for step in STEPS:
        info_path = output / step.folder / "run_info.json"
        if not info_path.exists():
            continue
        final_metrics = json.loads(info_path.read_text())["final_metrics"]
        for name, metric in step.gold_metrics:
            if final_metrics.get(metric) is not None:
                found[name] = float(final_metrics[metric])
    return found


def print_summary(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rlhf-trl e2e")
    for column in ("step", "wall time", "key metric", "value"):
        table.add_column(column)
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:.4f}"
        table.add_row(row["step"], f"{row['wall_time_s']:.1f} s", row["key_metric"], value)
    Console().print(table)


def print_samples(output: Path, count: int) -> None:
    """Greedy answers of the base, SFT and PPO models on a few held-out prompts (tiny task: with gold scores)."""
    from rich.console import Console
    from rich.table import Table

    from rlhf_trl.inference.evaluate import generate_answers
    from rlhf_trl.tiny.task import gold_score, make_records

    models = {"sft": output / STEP_DIRS[1], "ppo": output / STEP_DIRS[3]}
    models = {name: path for name, path in models.items() if (path / "config.json").exists()}
    if not models:
        return
    base = json.loads((output / STEP_DIRS[1] / "run_info.json").read_text())["base_model"] if "sft" in models else None
    if base:
        from rlhf_trl.models import resolve_model_name

        models = {"base": Path(resolve_model_name(base)), **models}
    prompts = [record["prompt"] for record in make_records("eval", 200)][:count]
    answers = {name: generate_answers(str(path), prompts, max_new_tokens=16) for name, path in models.items()}
    table = Table(title="sample conversations (greedy, held-out prompts; gold score in brackets)")
    table.add_column("prompt")
    for name in answers:
        table.add_column(name)
    for index, prompt in enumerate(prompts):
        cells = []
        for name in answers:
            answer = answers[name][index]
            cells.append(f"{answer.strip()} [{gold_score(prompt, answer):.2f}]")
        table.add_row(prompt, *cells)
    Console().print(table)


def parse_arguments(argv) -> argparse.Namespace:
    """Command-line flags over the recipe's optional e2e.yaml defaults (keys are the flags' names), validated:
    every problem is one ``error:`` line and exit code 2 before any step starts."""
    import yaml

    parser = build_parser()
    known = parser.parse_args(argv)
    defaults_file = recipe_dir(known.recipe) / "e2e.yaml"
    if defaults_file.exists():
        try:
            defaults = yaml.safe_load(defaults_file.read_text()) or {}
        except yaml.YAMLError as error:
            raise SystemExit(f"error: {defaults_file} is not valid YAML: {str(error).splitlines()[0]}") from error
        if not isinstance(defaults, dict):
            raise SystemExit(f"error: {defaults_file} must be a YAML mapping of flag: value")
        valid = {action.dest for action in parser._actions}
        unknown = sorted(set(defaults) - valid)
        if unknown:
            raise SystemExit(f"error: {defaults_file}: unknown keys {unknown}")
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    check_arguments(args)
    return args


def check_arguments(args: argparse.Namespace) -> None:
    """Values argparse's types and choices cannot judge alone: counts, and ZeRO stages the deployment offers."""
    from rlhf_trl.launch import config_for_deployment

    if args.num_processes is not None and args.num_processes < 1:
        raise SystemExit(f"error: --num-processes must be at least 1, got {args.num_processes}")
    if args.samples < 0:
        raise SystemExit(f"error: --samples must be 0 or more, got {args.samples}")
    for step in args.step:
        option = "--reward-zero-stage" if step == 2 else "--actor-zero-stage"
        stage = args.reward_zero_stage if step == 2 else args.actor_zero_stage
        try:
            config_for_deployment(args.deployment_type, stage)
        except ValueError as error:
            raise SystemExit(f"error: {option}: {error}") from error


def main(argv=None) -> int:
    from rlhf_trl.resources import ResourceNotFound, accelerate_config

    try:
        args = parse_arguments(argv)
        recipe = recipe_dir(args.recipe, args.variant)
        chosen_config = accelerate_config(args.accelerate_config) if args.accelerate_config else None
    except ResourceNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as stop:
        if not isinstance(stop.code, str):
            raise  # --help (0)
        print(stop.code, file=sys.stderr)
        return 2
    output = Path(args.output_dir)
    if args.resume and args.overwrite_output_dir:
        print(
            "error: --resume continues the earlier run, --overwrite_output_dir sets it aside: pick one",
            file=sys.stderr,
        )
        return 2
    try:
        output.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(output)
        lock.acquire(" ".join(redact_argv(sys.argv)))
    except (OSError, OutputDirError) as error:
        line = disk_error_line(error, output) if isinstance(error, OSError) else None
        print(f"error: {line or error}", file=sys.stderr)
        return 2
    try:
        return run_steps(args, recipe, output, chosen_config)
    finally:
        lock.release()


def run_steps(args, recipe: Path, output: Path, chosen_config: Path | None) -> int:
    """The chosen steps in order, in an output folder this run holds the lock of; ``chosen_config`` is the
    accelerate config for every step (None: each step's from the deployment type and ZeRO stage)."""
    from rlhf_trl.launch import config_for_deployment, launch_command

    if visible_contents(output) and not (args.resume or args.overwrite_output_dir):
        print(
            f"error: output dir {output} is not empty; pass --resume to skip the steps that finished and retry the "
            "rest, or --overwrite_output_dir to move earlier results aside",
            file=sys.stderr,
        )
        return 2
    if args.overwrite_output_dir:
        earlier = [output / name for name in ("e2e_summary.json", "report.html")]
        for step in args.step:
            earlier += [output / BY_NUMBER[step].folder, output / f"step{step}.log"]
        moved = move_aside(output, earlier)
        if moved is not None:
            print(f"note: moved the earlier results of steps {sorted(args.step)} to {moved}", file=sys.stderr)
    rows = []
    for step in sorted(args.step):
        folder = BY_NUMBER[step].folder
        step_dir = output / folder
        if args.resume and (step_dir / "run_info.json").exists():
            label, value = key_metric(step, step_dir)
            wall_time = json.loads((step_dir / "run_info.json").read_text()).get("wall_time_s") or 0.0
            print(f"==> step {step} ({folder}) finished earlier (run_info.json present): skipped")
            rows.append({"step": folder, "wall_time_s": wall_time, "key_metric": label, "value": value})
            continue
        zero_stage = args.reward_zero_stage if step == 2 else args.actor_zero_stage
        config = chosen_config or config_for_deployment(args.deployment_type, zero_stage)
        command = launch_command(
            config,
            BY_NUMBER[step].module,
            step_arguments(step, args, recipe, output),
            num_processes=args.num_processes,
        )
        print(f"==> step {step} ({folder}) with {config.name}; log: {output / f'step{step}.log'}")
        started = time.time()
        code = run_logged(command, output / f"step{step}.log", BY_NUMBER[step], step_dir / "metrics.jsonl")
        elapsed = time.time() - started
        if code != 0:
            print(
                f"error: step {step} failed (exit {code}); see {output / f'step{step}.log'}; once fixed, rerun with "
                "--resume to keep the finished steps and retry from this one",
                file=sys.stderr,
            )
            return code
        label, value = key_metric(step, step_dir)
        rows.append({"step": folder, "wall_time_s": elapsed, "key_metric": label, "value": value})
    gold = gold_progress(output)
    (output / "e2e_summary.json").write_text(json.dumps({"steps": rows, "gold_score": gold}, indent=2))
    print_summary(rows)
    if gold:
        print("held-out gold score: " + " -> ".join(f"{name} {value:.3f}" for name, value in gold.items()))
    if args.recipe == "tiny" and args.actor_model in (None, TINY_BASE):
        print_samples(output, args.samples)
    from rlhf_trl.reporting.report import write_report

    print(f"report: {write_report(output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
