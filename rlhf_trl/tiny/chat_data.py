"""Write the tiny sorting task as conversational data files, the way a user brings their own data.

    python -m rlhf_trl.tiny.chat_data data/tiny-chat

writes one folder per step, each with a training and a held-out file in TRL's conversational formats::

    data/tiny-chat/sft/train.jsonl      {"prompt": [user message], "completion": [assistant message]}
    data/tiny-chat/sft/test.jsonl       the held-out prompts with their correct answers
    data/tiny-chat/reward/train.jsonl   {"prompt": [user message], "chosen": [...], "rejected": [...]}
    data/tiny-chat/reward/test.jsonl    held-out correct-vs-flawed pairs
    data/tiny-chat/ppo/train.jsonl      {"prompt": [user message]}
    data/tiny-chat/ppo/test.jsonl       the held-out prompts

and beside them a dataset card ``README.md`` whose ``configs`` section names the split files.
The records are those of the embedded ``tiny-sort`` dataset (same split sizes, seeds and held-out prompts), so a
run on these files is comparable with ``recipes/tiny``. Each folder is also a Hub dataset repository, so it can
be uploaded as is (``hf upload me/tiny-sort-chat-sft data/tiny-chat/sft --repo-type dataset``) and loaded by its id.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from rlhf_trl.data import tiny_sort
from rlhf_trl.steps import STEPS
from rlhf_trl.tiny.chat_model import conversational_record

# Each step's data set lives in a folder named after the step.
STEP_FOLDERS = {step.number: step.name for step in STEPS}
SPLIT_FILES = ("train.jsonl", "test.jsonl")
STEP_DESCRIPTIONS = {
    1: "demonstrations (prompt/completion message lists) for supervised fine-tuning",
    2: "preference pairs (prompt/chosen/rejected message lists) for the reward model",
    3: "prompts (message lists) for PPO",
}


def step_records(step: int) -> dict[str, list[dict]]:
    """Conversational train and held-out records of ``step``, keyed by file name."""
    return {
        "train.jsonl": [conversational_record(record) for record in tiny_sort.train_records(step)],
        "test.jsonl": [conversational_record(record) for record in tiny_sort.eval_records(step)],
    }


def existing_files(output_dir: Path) -> list[Path]:
    """The files ``write_chat_task_files`` would replace."""
    names = (*SPLIT_FILES, "README.md")
    paths = [output_dir / folder / name for folder in STEP_FOLDERS.values() for name in names]
    return [path for path in paths if path.exists()]


def dataset_card(step: int) -> str:
    """A Hub dataset card whose ``configs`` section maps the split files, so ``load_dataset`` needs no guessing."""
    files = "\n".join(f"  - split: {name.removesuffix('.jsonl')}\n    path: {name}" for name in SPLIT_FILES)
    return (
        f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}\n---\n"
        f"# tiny-sort-chat, step {step}\n\nThe tiny sorting task of rlhf-trl as {STEP_DESCRIPTIONS[step]}, in TRL's "
        "conversational format. `test` holds the held-out records.\n"
    )


def _write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(staging, path)


def write_chat_task_files(output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the three steps' train and held-out files under ``output_dir``; returns the step folders by name."""
    root = Path(output_dir)
    folders = {}
    for step, folder in STEP_FOLDERS.items():
        for name, records in step_records(step).items():
            _write_text(root / folder / name, "".join(json.dumps(record) + "\n" for record in records))
        _write_text(root / folder / "README.md", dataset_card(step))
        folders[folder] = root / folder
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_trl.tiny.chat_data",
        description="Write the tiny sorting task as conversational jsonl files: OUTPUT_DIR/{sft,reward,ppo}/"
        "{train,test}.jsonl.",
    )
    parser.add_argument("output_dir", help="folder to write the data files to")
    parser.add_argument("--overwrite", action="store_true", help="replace data files already there")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        print(f"error: {output_dir} exists and is not a folder", file=sys.stderr)
        return 2
    present = existing_files(output_dir)
    if present and not args.overwrite:
        print(f"error: {present[0]} already exists; pass --overwrite to replace the data files", file=sys.stderr)
        return 2
    for name, folder in write_chat_task_files(output_dir).items():
        counts = ", ".join(f"{path.name} {sum(1 for _ in path.open())}" for path in sorted(folder.glob("*.jsonl")))
        print(f"{name}: {folder} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
