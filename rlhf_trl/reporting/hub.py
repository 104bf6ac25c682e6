"""Push a step's output folder to the Hugging Face Hub: ``rlhf-trl push DIR --hub_model_id user/name``.

The folder is never modified: what is uploaded is assembled in a temporary folder (links to an allow-list of the
checkpoint's files: weights, configs, tokenizer, metrics and plots; a redacted copy of run_info.json; a freshly
written model card; with ``--merge_lora`` the adapter merged into its base model). Trainer checkpoints, tracker
logs, evaluation outputs and ``training_args.bin`` stay local, and links pointing out of the folder are not
followed. The files sent and those kept local are printed. A failed upload
raises ``HubPushError`` with one line saying what failed; the local checkpoint stays byte-identical.
The Hub address comes from ``HF_ENDPOINT`` (default https://huggingface.co) and the token from ``token=``, the
``HF_TOKEN`` variable or ``hf auth login``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from fnmatch import fnmatch
from pathlib import Path

from rlhf_trl.models import (
    ADAPTER_CONFIG,
    adapter_base_model,
    adapter_config,
    adapter_tokenizer_source,
    is_lora_folder,
)
from rlhf_trl.reporting.model_card import read_run_info, redact_run_info, write_model_card

__all__ = ["HubPushError", "is_uploadable", "push_to_hub", "select_files", "stage_for_upload", "write_model_card"]

ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin")
# What a model repository needs, and nothing else: a step's folder also holds trainer checkpoints, tracker logs
# (wandb/), evaluation outputs on private data and training_args.bin, none of which may leave the machine.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    *ADAPTER_FILES,
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
LINEAGE_FILES = ("metrics.jsonl",)  # run_info.json and README.md are written fresh (redacted) into the upload
SUB_MODELS = ("critic", "ema")  # PPO saves its critic and EMA actor in these subfolders
PLOT_SUFFIXES = (".png", ".svg")


class HubPushError(RuntimeError):
    """The push did not happen or did not complete; the message is one line."""


def is_uploadable(relative: Path) -> bool:
    """The allow-list: model, config and tokenizer files (also of PPO's critic/ and ema/), metrics and plots."""
    parts = relative.parts
    name = relative.name
    if len(parts) == 1:
        return any(fnmatch(name, pattern) for pattern in (*MODEL_FILES, *TOKENIZER_FILES, *LINEAGE_FILES))
    if len(parts) == 2 and parts[0] in SUB_MODELS:
        return any(fnmatch(name, pattern) for pattern in (*MODEL_FILES, *TOKENIZER_FILES))
    return len(parts) == 2 and parts[0] == "plots" and name.endswith(PLOT_SUFFIXES)


def select_files(output_dir: Path) -> tuple[list[Path], list[str]]:
    """Files of ``output_dir`` to upload (relative paths) and what is left out (top-level names, one line each).

    Links are followed only when they stay inside the folder; linked folders are not entered."""
    root = output_dir.resolve()
    chosen, left_out = [], set()
    for directory, folders, files in os.walk(output_dir, followlinks=False):
        base = Path(directory)
        for name in folders:
            if (base / name).is_symlink():
                left_out.add(f"{(base / name).relative_to(output_dir).as_posix()}/ (a link)")
        for name in sorted(files):
            path = base / name
            relative = path.relative_to(output_dir)
            if relative.as_posix() in ("README.md", "run_info.json"):
                continue
            if not is_uploadable(relative):
                if relative.parts[0].startswith("."):
                    continue  # the lock and temporary folders: not worth a mention
                top = relative.parts[0] + ("/" if len(relative.parts) > 1 else "")
                left_out.add(top)
                continue
            resolved = path.resolve()
            if not resolved.is_file() or not resolved.is_relative_to(root):
                left_out.add(f"{relative.as_posix()} (a link out of the folder)")
                continue
            chosen.append(relative)
    return sorted(chosen), sorted(left_out)


def link_files(source: Path, destination: Path, files: list[Path]) -> None:
    """Mirror ``files`` of ``source`` into ``destination`` as symbolic links (copies where links are refused);
    files already present in ``destination`` are left out."""
    for relative in files:
        path = source / relative
        target = destination / relative
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(path.resolve())
        except OSError:
            shutil.copy2(path, target)


def merge_adapter(output_dir: Path, destination: Path) -> None:
    """Save the LoRA adapter of ``output_dir`` merged into its base model (and the tokenizer) into ``destination``."""
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    if adapter_base_model(output_dir) is None:
        raise HubPushError(f"{output_dir}/{ADAPTER_CONFIG} does not name its base model: cannot merge")
    is_classifier = adapter_config(output_dir).get("task_type") == "SEQ_CLS"
    model_class = AutoPeftModelForSequenceClassification if is_classifier else AutoPeftModelForCausalLM
    # Reward models here have one label; the base of their adapter is often a causal LM whose config says nothing.
    extra = {"num_labels": 1} if is_classifier else {}
    model = model_class.from_pretrained(output_dir, **extra)
    model.merge_and_unload().save_pretrained(destination)
    tokenizer = AutoTokenizer.from_pretrained(adapter_tokenizer_source(output_dir))
    tokenizer.save_pretrained(destination)


def stage_for_upload(output_dir: str | Path, staging_root: str | Path, merge_lora: bool = False) -> Path:
    """Assemble what will be uploaded under ``staging_root/<folder name>`` and return that folder.

    The checkpoint's files are linked, not copied; README.md is written fresh from run_info.json. With
    ``merge_lora`` an adapter folder is replaced by the merged full model.
    """
    output_dir = Path(output_dir)
    # Named after the folder the user means ("." has no name of its own).
    staging = Path(staging_root) / (output_dir.resolve().name or "upload")
    staging.mkdir(parents=True)
    files, _ = select_files(output_dir)
    merged = False
    if merge_lora:
        if not is_lora_folder(output_dir):
            raise HubPushError(f"--merge_lora: {output_dir} holds no LoRA adapter (no {ADAPTER_CONFIG})")
        merge_adapter(output_dir, staging)
        merged = True
        files = [path for path in files if path.as_posix() not in ADAPTER_FILES]
    link_files(output_dir, staging, files)
    run_info = read_run_info(output_dir)
    if run_info is not None:
        (staging / "run_info.json").write_text(json.dumps(redact_run_info(run_info), indent=2, default=str))
    write_model_card(staging, merged_from_adapter=merged)
    return staging


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'no message'}"


def push_to_hub(
    output_dir: str | Path,
    hub_model_id: str,
    private: bool = False,
    merge_lora: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create the model repository ``hub_model_id`` (if needed) and upload the checkpoint with its model card.

    Returns the repository's URL. Raises HubPushError when the folder holds no checkpoint, the merge fails or the
    Hub refuses or cannot be reached.
    """
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    has_model = (output_dir / "config.json").is_file() or is_lora_folder(output_dir)
    if not has_model:
        raise HubPushError(f"{output_dir} holds no checkpoint (no config.json or {ADAPTER_CONFIG})")
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None  # read now, not at import time
    run_info_path = output_dir / "run_info.json"
    step = json.loads(run_info_path.read_text())["step_name"] if run_info_path.is_file() else "checkpoint"
    message = commit_message or f"rlhf-trl: upload {step} output {output_dir.name}"
    with tempfile.TemporaryDirectory(prefix="rlhf-trl-push-") as staging_root:
        try:
            staging = stage_for_upload(output_dir, staging_root, merge_lora)
        except HubPushError:
            raise
        except Exception as error:  # model loading or merging: report it in one line, keep the chain for debugging
            raise HubPushError(f"could not prepare {output_dir} for upload: {_one_line(error)}") from error
        sent = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*") if not path.is_dir())
        _, left_out = select_files(output_dir)
        print(f"uploading to {hub_model_id}: {', '.join(sent)}")
        if left_out:
            print(f"kept local (not uploaded): {', '.join(left_out)}")
        api = HfApi(endpoint=endpoint, token=token)
        try:
            repo_url = api.create_repo(hub_model_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo_url.repo_id, folder_path=staging, commit_message=message, repo_type="model")
        except Exception as error:  # HTTP errors, refused connections, server-side validation: all end the push
            raise HubPushError(f"push of {output_dir} to {hub_model_id} failed: {_one_line(error)}") from error
    return str(repo_url)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-trl push",
        description="Upload a step's output folder (checkpoint, model card, metrics) to the Hugging Face Hub. "
        "The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT selects another Hub.",
    )
    parser.add_argument("output_dir", help="output folder of an SFT, reward or PPO step")
    parser.add_argument("--hub_model_id", "--hub-model-id", required=True, help="repository id, e.g. user/name")
    parser.add_argument("--hub_private_repo", "--hub-private-repo", action="store_true", help="create it private")
    parser.add_argument(
        "--merge_lora", "--merge-lora", action="store_true", help="push a LoRA adapter merged into its base model"
    )
    parser.add_argument("--commit_message", "--commit-message", default=None, help="message of the Hub commit")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = make_parser().parse_args(argv)
    try:
        url = push_to_hub(
            arguments.output_dir,
            arguments.hub_model_id,
            private=arguments.hub_private_repo,
            merge_lora=arguments.merge_lora,
            commit_message=arguments.commit_message,
        )
    except HubPushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
