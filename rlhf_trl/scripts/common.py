"""Pieces every step script shares: argument parsing with one-line errors, output-dir safety, model loading,
metric logging to ``metrics.jsonl`` and the ``run_info.json`` lineage record."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import TrlParser, get_peft_config, get_quantization_config

from rlhf_trl.models import is_lora_folder, model_folder_problem
from rlhf_trl.output_dir import (
    OutputDirError,
    OutputLock,
    claim_output_dir,
    disk_error_line,
    find_resume_checkpoint,
    latest_complete_checkpoint,
    release_held_locks,
    resumes_inside,
    save_atomically,
    truncate_jsonl,
)
from rlhf_trl.redaction import blank_secret_fields, redact_argv, redact_mapping
from rlhf_trl.steps import BY_NAME

logger = logging.getLogger("rlhf_trl")


class StepError(RuntimeError):
    """A problem with the user's input, reported as one line before any training starts."""


class _StepParser(TrlParser):
    """TrlParser whose usage errors (a flag's bad value, a missing argument) are one-line StepErrors."""

    def error(self, message):
        raise StepError(message)


def parse_step_arguments(dataclass_types, argv):
    """TrlParser with YAML (`--config`) and command-line flags; unknown keys are errors. Every value is validated
    (types, ranges, reward functions importable) before anything loads; problems are one-line StepErrors."""
    from rlhf_trl.configs import apply_reproducibility, check_parsed_arguments, check_yaml_types

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _StepParser(dataclass_types)
    try:
        if "--config" in argv[:-1]:
            check_yaml_types(read_config_file(argv[argv.index("--config") + 1]), dataclass_types)
        parsed = parser.parse_args_and_config(args=argv)
        check_parsed_arguments(parsed)
    except (ValueError, TypeError) as error:
        raise StepError(str(error).strip().splitlines()[0]) from error
    apply_reproducibility(parsed)
    return parsed


def read_config_file(path: str) -> dict:
    """The YAML mapping of a ``--config`` file; a missing file, broken YAML or YAML that is not a mapping of
    field: value is a one-line StepError."""
    import yaml

    config_path = Path(path)
    if not config_path.is_file():
        raise StepError(f"config file {path} does not exist" if not config_path.exists() else f"{path} is not a file")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise StepError(f"config file {path} is not valid YAML{line}: {problem}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise StepError(f"cannot read config file {path}: {error}") from error
    if not isinstance(config, dict):
        raise StepError(f"config file {path} must be a YAML mapping of field: value, got {type(config).__name__}")
    return config


def run_step(main_function, argv):
    """Run a step's main; our own errors become one line on stderr and exit code 2 instead of a traceback."""
    from rlhf_trl.data import DataValidationError
    from rlhf_trl.guards import TrainingStoppedError
    from rlhf_trl.reward.functions import RewardFunctionError
    from rlhf_trl.reward.remote import RemoteRewardError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main_function(argv)
    # A reward source failing mid-run (a remote server gone after its retries, a function's signature) is one line
    # too: the checkpoints written so far stay, and a resume continues from the last one.
    except (
        StepError,
        DataValidationError,
        OutputDirError,
        TrainingStoppedError,
        RewardFunctionError,
        RemoteRewardError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A full or read-only disk is the user's to fix, not a bug: one line naming the file.
        line = disk_error_line(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    finally:
        release_held_locks()  # a killed run cannot: its lock is taken over by the next run, with a note


@dataclass
class HubRequest:
    """What ``--push_to_hub`` asked for, kept apart from the training config so the Trainer neither pushes the whole
    folder itself nor pickles the token into ``training_args.bin``."""

    push: bool = False
    model_id: str | None = None
    private: bool = False
    token: str | None = None


@dataclass
class StepOutput:
    """The output folder a step owns: its lock, the checkpoint it resumes from, and the Hub request."""

    path: Path
    resume_checkpoint: Path | None
    hub: HubRequest
    is_main_process: bool
    lock: OutputLock | None = None

    def save_final(self, save) -> None:
        """``save(folder)`` writes the final model; it goes to a temporary folder first, then is renamed into
        place, so a failed save never destroys what the folder held."""
        try:
            save_atomically(self.path, save, self.is_main_process)
        except OSError as error:
            line = disk_error_line(error, self.path)
            if line is None:
                raise
            kept = latest_complete_checkpoint(self.path)
            hint = f"; {kept} is kept: rerun with --resume_from_checkpoint true once there is room" if kept else ""
            raise StepError(line + hint) from error

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def redacted_command() -> str:
    return " ".join(shlex.quote(part) for part in redact_argv(sys.argv))


def open_step_output(training_args, run_args) -> StepOutput:
    """Claim ``training_args.output_dir`` for this run before any model is loaded.

    Lock the folder (a second run into it is refused), move earlier contents aside with ``--overwrite_output_dir``,
    resolve ``--resume_from_checkpoint`` (true or a path) to a complete checkpoint, and take the Hub settings and
    every secret out of ``training_args``. The main process claims the folder; the others wait, then resolve.
    """
    hub = HubRequest(
        push=bool(training_args.push_to_hub),
        model_id=training_args.hub_model_id,
        private=bool(training_args.hub_private_repo),
    )
    hub.token = blank_secret_fields(training_args).get("hub_token")
    if hub.push and not hub.model_id:
        raise StepError("push_to_hub needs --hub_model_id")
    # Our finish_step pushes an allow-list of files; the Trainer's own push would upload the whole folder.
    training_args.push_to_hub = False
    path = Path(training_args.output_dir)
    requested = training_args.resume_from_checkpoint
    resuming = resumes_inside(path, requested)  # from another folder's checkpoint: this folder starts a new run
    if resuming and run_args.overwrite_output_dir:
        raise StepError(
            f"--overwrite_output_dir moves the checkpoints of {path} aside: it cannot be combined with resuming there"
        )
    is_main_process = training_args.process_index == 0
    lock = None
    try:
        with training_args.main_process_first(desc="claiming the output folder"):
            if is_main_process:
                lock = claim_output_dir(path, run_args.overwrite_output_dir, resuming, redacted_command())
            resume = find_resume_checkpoint(path, requested, announce=is_main_process)
    except OutputDirError as error:
        if lock is not None:
            lock.release()
        raise StepError(str(error)) from error
    training_args.resume_from_checkpoint = str(resume) if resume is not None else None
    if resume is not None and is_main_process:
        print(f"resuming from {resume}", file=sys.stderr)
    return StepOutput(path, resume, hub, is_main_process, lock)


def check_model_path(name_or_path: str | None, what: str, needs_tokenizer: bool = False) -> str:
    """Fail early on a missing or damaged local model folder; hub names are left to from_pretrained."""
    if not name_or_path:
        raise StepError(f"no {what} given (set model_name_or_path)")
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not is_lora_folder(path):
            raise StepError(f"{what} {name_or_path} has no config.json: not a Hugging Face model folder")
        problem = model_folder_problem(path, needs_tokenizer)
        if problem:
            raise StepError(f"{what}: {problem}")
    elif name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        # Hub ids are 'name' or 'org/name'; anything else is a local path that is not there.
        raise StepError(f"{what} {name_or_path} does not exist")
    return name_or_path


def model_init_kwargs(model_args) -> dict:
    """from_pretrained keyword arguments from TRL's ModelConfig: dtype, attention and 8/4-bit quantization."""
    kwargs = {"revision": model_args.model_revision}
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = getattr(torch, model_args.dtype)
    elif model_args.dtype == "auto":
        kwargs["dtype"] = "auto"
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        # Quantized weights are placed at load time: this process's GPU, or the CPU (bitsandbytes >= 0.45 runs there).
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
        if model_args.dtype is None and not torch.cuda.is_available():
            # The layers that stay unquantized (norms, heads) must match the float32 activations of CPU kernels.
            kwargs["dtype"] = torch.float32
    return kwargs


def load_pretrained(model_class, name_or_path: str, what: str, **kwargs):
    """from_pretrained with a one-line error naming the model when it cannot be loaded."""
    check_model_path(name_or_path, what, needs_tokenizer=model_class.__name__.endswith("Tokenizer"))
    try:
        return model_class.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StepError(f"cannot load {what} {name_or_path}: {first_line}") from error


def load_tokenizer(name_or_path: str, what: str, pad_token: str | None = None, trust_remote_code: bool = False):
    """A model's tokenizer with a pad token distinct from EOS (see rlhf_trl.models.ensure_pad_token)."""
    from transformers import AutoTokenizer

    from rlhf_trl.models import ensure_pad_token

    tokenizer = load_pretrained(AutoTokenizer, name_or_path, what, trust_remote_code=trust_remote_code)
    try:
        ensure_pad_token(tokenizer, pad_token)
    except ValueError as error:
        raise StepError(f"{what} {name_or_path}: {error}") from error
    return tokenizer


def load_functions(specs: list[str] | None, what: str) -> list:
    """Reward or gold functions named 'module:function', imported before any model loads; errors are one line."""
    from rlhf_trl.reward.sources import load_reward_function

    try:
        return [load_reward_function(spec) for spec in specs or []]
    except ValueError as error:
        raise StepError(f"{what}: {error}") from error


def trainable_in_float32_on_cpu(model) -> None:
    """TRL casts the trainable parameters of quantized models to bf16 (the QLoRA recipe). On CPU the bitsandbytes
    kernels return float32 activations, and a bf16 head trained in full (the reward model's ``score``) would then
    see mismatched dtypes, so trainable parameters go back to float32 there."""
    if torch.cuda.is_available() or getattr(model.config, "quantization_config", None) is None:
        return
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


def train_and_save_final(trainer, tokenizer, output, divergence, resume_from_checkpoint) -> None:
    """Train a TRL trainer, refuse a diverged result, then write model and tokenizer as the step's result (under a
    temporary name, renamed: a failed save keeps an earlier good model)."""
    trainable_in_float32_on_cpu(trainer.model)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    divergence.raise_if_diverged()  # before saving: a diverged model must not become the step's result

    def save(folder):
        trainer.save_model(str(folder))
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(str(folder))

    output.save_final(save)


def peft_config_or_none(model_args):
    return get_peft_config(model_args) if model_args.use_peft else None


class MetricsFileCallback(TrainerCallback):
    """Append every log of a TRL trainer to ``output_dir/metrics.jsonl`` (main process only)."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / "metrics.jsonl"

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run continues the file: lines logged after its checkpoint are dropped, as if never interrupted.
        if state.is_world_process_zero:
            truncate_jsonl(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def hyperparameters(training_args, keys) -> dict:
    return {key: getattr(training_args, key) for key in keys if hasattr(training_args, key)}


def write_run_info(output_dir, step_name, model_args, data_args, training_args, keys, final_metrics, started):
    """Record the lineage of a checkpoint (used by the model card, the report and `rlhf-trl e2e`)."""
    info = {
        "step_name": step_name,
        "base_model": model_args.model_name_or_path,
        "datasets": data_args.source_labels,
        "data_split": data_args.data_split,
        "hyperparameters": hyperparameters(training_args, keys),
        "final_metrics": final_metrics,
        "command": redacted_command(),
        "wall_time_s": round(time.time() - started, 2),
        "lora": bool(model_args.use_peft),
        "quantization": "8-bit" if model_args.load_in_8bit else ("4-bit" if model_args.load_in_4bit else None),
    }
    info = redact_mapping(info)
    path = Path(output_dir) / "run_info.json"
    path.write_text(json.dumps(info, indent=2, default=str))
    return info


def finish_step(output: StepOutput, step_name, parsed, hyperparameter_keys, final_metrics, started) -> None:
    """After a step saved its checkpoint (main process only): lineage record, plots, model card, optional Hub push
    and the final metrics table; then the folder's lock is released. ``parsed`` is the (model, data, training, run)
    arguments tuple."""
    from rlhf_trl.reporting import hub, plots

    model_args, data_args, training_args, run_args = parsed
    output_dir = output.path
    write_run_info(
        output_dir, step_name, model_args, data_args, training_args, hyperparameter_keys, final_metrics, started
    )
    if run_args.plots:
        plots.plot_step(output_dir)
    hub.write_model_card(output_dir)
    if output.hub.push:
        try:
            url = hub.push_to_hub(
                output_dir,
                output.hub.model_id,
                private=output.hub.private,
                merge_lora=run_args.merge_lora,
                token=output.hub.token,
            )
        except hub.HubPushError as error:
            raise StepError(f"{error} (the trained model is saved in {output_dir})") from error
        logger.info("pushed %s to %s", output_dir, url)
    print_table(BY_NAME[step_name].label, final_metrics)
    output.release()


def print_table(title: str, rows: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
