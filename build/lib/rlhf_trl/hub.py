"""Push a step's output folder to the Hugging Face Hub: ``rlhf-trl push DIR --hub_model_id user/name``.

The folder is never modified: what is uploaded is assembled in a temporary folder (links to the checkpoint's files,
a freshly written model card, and with ``--merge_lora`` the adapter merged into its base model). A failed upload
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
from pathlib import Path

from rlhf_trl.model_card import write_model_card

__all__ = ["HubPushError", "push_to_hub", "stage_for_upload", "write_model_card"]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


class HubPushError(RuntimeError):
    """The push did not happen or did not complete; the message is one line."""


def _is_skipped(relative: Path) -> bool:
    """Trainer checkpoints (``checkpoint-*``) and hidden files stay local: they are for resuming, not sharing."""
    return any(part.startswith(".") or part.startswith("checkpoint-") for part in relative.parts)


def link_files(source: Path, destination: Path, exclude: tuple[str, ...] = ()) -> None:
    """Mirror the files of ``source`` into ``destination`` as symbolic links (copies where links are refused);
    files named in ``exclude`` or already present in ``destination`` are left out."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() or _is_skipped(relative) or relative.as_posix() in exclude:
            continue
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

    adapter_config = json.loads((output_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if not adapter_config.get("base_model_name_or_path"):
        raise HubPushError(f"{output_dir}/adapter_config.json does not name its base model: cannot merge")
    is_classifier = adapter_config.get("task_type") == "SEQ_CLS"
    model_class = AutoPeftModelForSequenceClassification if is_classifier else AutoPeftModelForCausalLM
    # Reward models here have one label; the base of their adapter is often a causal LM whose config says nothing.
    extra = {"num_labels": 1} if is_classifier else {}
    model = model_class.from_pretrained(output_dir, **extra)
    model.merge_and_unload().save_pretrained(destination)
    has_tokenizer = (output_dir / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(
        output_dir if has_tokenizer else adapter_config["base_model_name_or_path"]
    )
    tokenizer.save_pretrained(destination)


def stage_for_upload(output_dir: str | Path, staging_root: str | Path, merge_lora: bool = False) -> Path:
    """Assemble what will be uploaded under ``staging_root/<folder name>`` and return that folder.

    The checkpoint's files are linked, not copied; README.md is written fresh from run_info.json. With
    ``merge_lora`` an adapter folder is replaced by the merged full model.
    """
    output_dir = Path(output_dir)
    staging = Path(staging_root) / output_dir.name
    staging.mkdir(parents=True)
    merged = False
    if merge_lora:
        if not (output_dir / "adapter_config.json").is_file():
            raise HubPushError(f"--merge_lora: {output_dir} holds no LoRA adapter (no adapter_config.json)")
        merge_adapter(output_dir, staging)
        merged = True
    link_files(output_dir, staging, exclude=(*ADAPTER_FILES, "README.md") if merged else ("README.md",))
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
    has_model = any((output_dir / name).is_file() for name in ("config.json", "adapter_config.json"))
    if not has_model:
        raise HubPushError(f"{output_dir} holds no checkpoint (no config.json or adapter_config.json)")
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
