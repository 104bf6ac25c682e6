"""``python -m rlhf_trl.bench.memory``: peak memory of full fine-tuning vs 8-bit base weights + LoRA, per step.

For each step (sft, reward, ppo) and each mode (``full``: fp32 weights, all trained; ``8bit-lora``: bitsandbytes
8-bit base weights, LoRA adapters trained) the real step script runs with its tiny recipe
(``recipes/tiny/<step>.yaml`` or ``<step>-8bit-lora.yaml``) on the tiny-sort data, in a fresh process of its own.
The models are OPT-shaped with random weights, built from their configurations (nothing is downloaded): a causal LM
for SFT and the PPO actor, a one-label sequence classifier for the reward model and the PPO reward/critic. The tiny
tokenizer is padded with filler words up to OPT's published vocabulary, so the parameter counts are the published
ones. Memory depends on the shapes, not on the weights' values.

Peak memory is the high-water mark of the step process's resident set (``VmHWM``), read by the process itself:
over the whole run, and over training alone (the mark is reset at the first optimizer step, after loading). With
CUDA, ``torch.cuda.max_memory_allocated`` is recorded the same two ways.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlhf_trl.bench.memory_child import run_child
from rlhf_trl.reporting.benchmarks_file import append_section
from rlhf_trl.steps import BY_NAME, STEP_NAMES

MODES = {"full": "{step}.yaml", "8bit-lora": "{step}-8bit-lora.yaml"}
SIZES = ("tiny", "opt-125m", "opt-350m")
# The first argument that turns this module into the measuring child (see run_child); not meant for users.
CHILD_FLAG = "--measure-child"
PEAK_FIELDS = ("peak_rss_mib", "train_peak_rss_mib", "cuda_peak_allocated_mib", "cuda_train_peak_allocated_mib")
RUN_FIELDS = (
    "step",
    "mode",
    "recipe",
    "exit_code",
    "peak_rss_mib",
    "train_peak_rss_mib",
    "file_rss_mib",
    "wall_s",
    "trainable_parameters",
    "cuda_peak_allocated_mib",
    "cuda_train_peak_allocated_mib",
)


# ------------------------------------------------------------------------------------------------------ the models
def padded_tokenizer(vocab_size: int):
    """The tiny task's word-level tokenizer with filler words ``w<id>`` up to ``vocab_size`` entries, so a model with
    a published vocabulary size decodes every id it samples to a word that tokenizes back to the same id."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from rlhf_trl.tiny.model import SPECIAL_TOKENS, build_tokenizer

    tiny = build_tokenizer()
    layout = json.loads(tiny.backend_tokenizer.to_str())
    vocab = layout["model"]["vocab"]
    vocab.update({f"w{index}": index for index in range(len(vocab), vocab_size)})
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(layout)), **SPECIAL_TOKENS)
    tokenizer.padding_side = tiny.padding_side
    return tokenizer


def model_config(size: str):
    """(tokenizer, OPTConfig) for a size: the tiny recipes' model, or a facebook/opt-* shape."""
    from rlhf_trl.bench.workloads import OPT_SIZES
    from rlhf_trl.tiny.model import build_config, build_tokenizer

    if size == "tiny":
        tokenizer = build_tokenizer()
        return tokenizer, build_config(tokenizer)
    config = OPT_SIZES[size]()
    tokenizer = padded_tokenizer(config.vocab_size)
    config.pad_token_id = tokenizer.pad_token_id  # PPO tells padding from a real end of answer
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    return tokenizer, config


def build_models(size: str, folder: Path) -> dict:
    """Save a causal LM and a one-label sequence classifier of ``size`` (random weights) with the tokenizer.
    Returns their folders and parameter counts."""
    import torch
    from transformers import OPTForCausalLM, OPTForSequenceClassification

    from rlhf_trl.bench.workloads import parameter_count

    tokenizer, config = model_config(size)
    torch.manual_seed(0)
    models = {}
    for name, model_class in (("causal_lm", OPTForCausalLM), ("classifier", OPTForSequenceClassification)):
        if name == "classifier":
            config.num_labels = 1
        model = model_class(config)
        if name == "causal_lm":
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.generation_config.eos_token_id = tokenizer.eos_token_id
        path = folder / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        models[name] = {"path": str(path), "parameters": parameter_count(model)}
        del model
    return models


# --------------------------------------------------------------------------------------------------------- the runs
def script_arguments(step: str, mode: str, models: dict, output_dir: Path, options: argparse.Namespace) -> list[str]:
    """Flags of one run: the recipe, the built models, and a short run (evaluation on one record, no plots or gold
    scoring, one optimizer step per PPO step so that --steps means the same in every step)."""
    from rlhf_trl.resources import recipe_dir

    recipe = recipe_dir("tiny") / MODES[mode].format(step=step)
    model = models["classifier" if step == "reward" else "causal_lm"]["path"]
    arguments = [
        "--config", str(recipe), "--model_name_or_path", model, "--output_dir", str(output_dir),
        "--overwrite_output_dir", "true", "--plots", "false", "--gold_scorer", "",
        "--max_steps", str(options.steps), "--per_device_train_batch_size", str(options.batch_size),
        "--gradient_accumulation_steps", "1", "--max_train_samples", str(max(64, options.steps * options.batch_size)),
        "--max_eval_samples", "1", "--report_to", "none",
    ]  # fmt: skip
    if step == "ppo":
        arguments += [
            "--reward_model_path", models["classifier"]["path"], "--num_mini_batches", "1", "--num_ppo_epochs", "1",
        ]  # fmt: skip
    return arguments


def measure(step: str, mode: str, models: dict, workdir: Path, options: argparse.Namespace) -> dict:
    """One run in a fresh process; returns its peaks, wall time and exit code (and its log's tail on failure)."""
    run_dir = workdir / f"{step}-{mode}"
    run_dir.mkdir()
    result_path, log_path = run_dir / "result.json", run_dir / "log.txt"
    arguments = script_arguments(step, mode, models, run_dir / "output", options)
    command = [sys.executable, "-m", "rlhf_trl.bench.memory", CHILD_FLAG, step, str(result_path), *arguments]
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    print(f"running {step} ({mode}) ...", flush=True)
    started = time.perf_counter()
    with log_path.open("w") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    wall = time.perf_counter() - started
    shutil.rmtree(run_dir / "output", ignore_errors=True)  # saved models add up to gigabytes over the runs
    run = {field: None for field in RUN_FIELDS}
    if result_path.exists():
        run.update(json.loads(result_path.read_text()))
    run.update(
        step=step, mode=mode, recipe=f"recipes/tiny/{MODES[mode].format(step=step)}", wall_s=round(wall, 1),
        exit_code=completed.returncode, command=shlex.join([f"python -m {BY_NAME[step].module}", *arguments]),
    )  # fmt: skip
    if completed.returncode != 0:
        run["log_tail"] = log_path.read_text(errors="replace")[-3000:]
        print(f"{step} ({mode}) failed with exit code {completed.returncode}:\n{run['log_tail']}", file=sys.stderr)
    return run


def ratios(runs: list[dict]) -> dict:
    """8-bit LoRA / full of each peak, per step where both runs succeeded."""
    by_key = {(run["step"], run["mode"]): run for run in runs if run["exit_code"] == 0}
    out = {}
    for step in STEP_NAMES:
        full, lora = by_key.get((step, "full")), by_key.get((step, "8bit-lora"))
        if full and lora:
            out[step] = {
                key: round(lora[key] / full[key], 3) for key in PEAK_FIELDS if lora.get(key) and full.get(key)
            }
    return out


def run_benchmark(options: argparse.Namespace) -> dict:
    """Build the models once, then measure every requested (step, mode) pair in its own process."""
    from rlhf_trl.bench.workloads import device_description

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        workdir = Path(folder)
        models = build_models(options.size, workdir / "models")
        runs = [
            measure(step, mode, models, workdir, options) for step in options.pipeline_step for mode in options.mode
        ]
    return {
        "size": options.size,
        "device": device_description(),
        "parameters": {name: model["parameters"] for name, model in models.items()},
        "steps": options.steps,
        "batch_size": options.batch_size,
        "runs": runs,
        "ratios": ratios(runs),
    }


# ------------------------------------------------------------------------------------------------------- reporting
def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by the terminal table and the markdown section. Ratios are 8-bit LoRA / full."""
    with_cuda = any(run.get("cuda_peak_allocated_mib") for run in result["runs"])
    header = ["step", "mode", "peak RSS MiB", "ratio", "training peak RSS MiB", "ratio", "mapped files MiB"]
    if with_cuda:
        header += ["peak CUDA MiB", "ratio", "training peak CUDA MiB", "ratio"]
    header += ["trainable params", "wall s"]

    def number(value, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    rows = []
    for run in result["runs"]:
        ratio = result["ratios"].get(run["step"], {}) if run["mode"] == "8bit-lora" else {}
        mode = run["mode"]
        if run["exit_code"] != 0:
            mode += f" (failed, exit {run['exit_code']})"
        row = [run["step"], mode]
        keys = ["peak_rss_mib", "train_peak_rss_mib"]
        if with_cuda:
            keys += ["cuda_peak_allocated_mib", "cuda_train_peak_allocated_mib"]
        for key in keys:
            row += [number(run.get(key)), number(ratio.get(key), 2) if ratio else ""]
            if key == "train_peak_rss_mib":
                row += [number(run.get("file_rss_mib"))]
        row += [number(run["trainable_parameters"]), number(run["wall_s"], 1)]
        rows.append(row)
    return header, rows


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(result)
    table = Table(title=f"peak memory, {result['size']}: full fine-tuning vs 8-bit LoRA (ratio: 8-bit LoRA / full)")
    for name in header:
        table.add_column(name, justify="left" if name in ("step", "mode") else "right")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.width = max(console.width, 140)  # a pipe reports 80 columns, too narrow for the table
    console.print(table)


def format_section(result: dict, command: str, when: datetime.datetime) -> str:
    """One markdown section for the benchmarks file."""
    from rlhf_trl.bench.workloads import readable_count

    header, rows = table_rows(result)
    table = "\n".join(
        [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
    )
    parameters = result["parameters"]
    title = f"Peak memory, full fine-tuning vs 8-bit LoRA, `{result['size']}`, {when.strftime('%Y-%m-%d %H:%M UTC')}"
    return (
        f"## {title}\n\n"
        f"- Command: `{command}`\n- Device: {result['device']}\n"
        f"- Models: random `{result['size']}`-shaped OPT causal LM ({readable_count(parameters['causal_lm'])} "
        f"parameters; SFT, PPO actor) and one-label classifier ({readable_count(parameters['classifier'])}; reward "
        "model, PPO reward and critic).\n"
        f"- Setting: each step script with `recipes/tiny/<step>.yaml` (full: fp32, every weight trained) or "
        f"`<step>-8bit-lora.yaml` (bitsandbytes 8-bit base, LoRA r=8 trained) on tiny-sort, {result['steps']} "
        f"optimizer steps of {result['batch_size']} samples (PPO: {result['batch_size']} prompts per rollout, one "
        "mini-batch, one epoch), evaluation on one record, one fresh process per run.\n"
        "- Peak RSS: the step process's own VmHWM over the whole run (imports, loading, training, saving); "
        "training peak: the mark reset at the first optimizer step. Ratio: 8-bit LoRA / full. Mapped files: the "
        "part of RSS in mapped files (RssFile) at the last optimizer step, clean pages the kernel can reclaim "
        "(shared libraries; with 8-bit loading, the checkpoint it read whole and keeps mapped). Wall time includes "
        "start-up and loading.\n\n"
        f"{table}\n"
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_trl.bench.memory",
        description="Peak memory of full fine-tuning vs 8-bit base weights + LoRA, for each step, each run in a "
        "process of its own. Prints a table and a markdown section; --append adds the section to --benchmarks-file.",
    )
    parser.add_argument("--size", choices=SIZES, default="opt-125m", help="model shape (default: opt-125m)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per run, at least 2 (default: 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples (PPO: prompts) per step (default: 4)")
    parser.add_argument(
        "--pipeline-step",
        nargs="+",
        choices=STEP_NAMES,
        default=list(STEP_NAMES),
        help="steps to measure (default: all)",
    )
    parser.add_argument(
        "--mode", nargs="+", choices=list(MODES), default=list(MODES), help="modes to measure (default: both)"
    )
    parser.add_argument("--output-json", help="also write the raw measurements here")
    parser.add_argument("--benchmarks-file", default="BENCHMARKS.md", help="markdown file --append writes to")
    parser.add_argument("--append", action="store_true", help="append the section to --benchmarks-file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and the markdown section; 0 when every run succeeded, 1 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == CHILD_FLAG:
        return run_child(argv[1:])
    parser = make_parser()
    options = parser.parse_args(argv)
    if options.steps < 2:
        parser.error("--steps must be at least 2: the training peak is read from the second optimizer step on")
    result = run_benchmark(options)
    command = "python -m rlhf_trl.bench.memory " + shlex.join(argv)
    section = format_section(result, command, datetime.datetime.now(datetime.timezone.utc))
    print_table(result)
    print(section)
    if options.output_json:
        Path(options.output_json).write_text(json.dumps(result, indent=2))
    if options.append:
        append_section(Path(options.benchmarks_file), section)
    return 0 if all(run["exit_code"] == 0 for run in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
