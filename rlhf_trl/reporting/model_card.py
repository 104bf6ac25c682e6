"""Model card (README.md) of a checkpoint, written from the lineage its step recorded in ``run_info.json``.

The YAML front matter gives the Hub what it indexes (library, base model, tags, datasets); the body says how the
checkpoint was made: base model, step, datasets and split, key hyperparameters, final metrics, time, and the exact
command. Names that are local paths or files are kept out of the front matter (the Hub would read them as ids of
its own models and datasets) and appear in the body only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from rlhf_trl.models import is_lora_folder
from rlhf_trl.redaction import redact_command, redact_mapping

STEP_TITLES = {
    "sft": "supervised fine-tuning (step 1)",
    "reward": "reward model training (step 2)",
    "ppo": "PPO (step 3)",
}
PIPELINE_TAGS = {"sft": "text-generation", "reward": "text-classification", "ppo": "text-generation"}
# Shown in the lineage table when present; the full list goes in a folded section below it.
KEY_HYPERPARAMETERS = (
    "learning_rate",
    "actor_learning_rate",
    "critic_learning_rate",
    "num_train_epochs",
    "max_steps",
    "total_episodes",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_ratio",
    "kl_coef",
    "cliprange",
    "cliprange_value",
    "gamma",
    "lam",
    "num_ppo_epochs",
    "response_length",
    "temperature",
    "seed",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow")


def is_hub_id(name: object) -> bool:
    """True for names shaped like ``owner/name`` that are not a local path or a data file."""
    return (
        isinstance(name, str)
        and bool(_HUB_ID.match(name))
        and not name.endswith(_FILE_SUFFIXES)
        and not Path(name).exists()
    )


def read_run_info(folder: Path) -> dict | None:
    path = folder / "run_info.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def redact_run_info(run_info: dict) -> dict:
    """run_info with secrets hidden, also when it was written by a version that recorded them."""
    cleaned = redact_mapping(run_info)
    if isinstance(cleaned.get("command"), str):
        cleaned["command"] = redact_command(cleaned["command"])
    return cleaned


def _value(value) -> str:
    """A table cell: user text cannot end the row, start a new one, or open HTML."""
    if isinstance(value, float):
        return f"{value:.6g}"
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    text = " ".join(text.split("\n"))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def code_block(text: str, language: str = "") -> list[str]:
    """``text`` in a fenced block whose fence is longer than any run of backticks inside, so it cannot end early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + language, text, fence]


def _table(rows: dict) -> list[str]:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {_value(key)} | {_value(value)} |" for key, value in rows.items()]
    return lines


def front_matter(run_info: dict | None, is_adapter: bool) -> dict:
    """The YAML metadata of the card."""
    step = (run_info or {}).get("step_name")
    metadata: dict = {"library_name": "peft" if is_adapter else "transformers"}
    base_model = (run_info or {}).get("base_model")
    if is_hub_id(base_model):
        metadata["base_model"] = base_model
    metadata["tags"] = ["rlhf-trl", "trl"] + ([step] if step else [])
    datasets = [name for name in (run_info or {}).get("datasets") or [] if is_hub_id(name)]
    if datasets:
        metadata["datasets"] = datasets
    if step in PIPELINE_TAGS:
        metadata["pipeline_tag"] = PIPELINE_TAGS[step]
    return metadata


def usage_snippet(step: str | None, is_adapter: bool) -> list[str]:
    if is_adapter:
        auto_class = "AutoPeftModelForSequenceClassification" if step == "reward" else "AutoPeftModelForCausalLM"
        module = "peft"
    else:
        auto_class = "AutoModelForSequenceClassification" if step == "reward" else "AutoModelForCausalLM"
        module = "transformers"
    return [
        "```python",
        f"from {module} import {auto_class}",
        "from transformers import AutoTokenizer",
        "",
        f'model = {auto_class}.from_pretrained("<this repository>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this repository>")',
        "```",
    ]


def render_model_card(folder: str | Path, merged_from_adapter: bool = False) -> str:
    """The README.md text for the checkpoint in ``folder`` (which may lack run_info.json: the card then says so)."""
    folder = Path(folder)
    run_info = read_run_info(folder)
    run_info = redact_run_info(run_info) if run_info is not None else None
    is_adapter = is_lora_folder(folder)
    step = (run_info or {}).get("step_name")
    metadata = yaml.safe_dump(front_matter(run_info, is_adapter), sort_keys=False, allow_unicode=True)
    lines = ["---", metadata.rstrip("\n"), "---", "", f"# {folder.name}", ""]
    if run_info is None:
        lines += ["This checkpoint was made with rlhf-trl; its lineage was not recorded (no run_info.json).", ""]
        lines += ["## Usage", "", *usage_snippet(step, is_adapter), ""]
        return "\n".join(lines)
    title = STEP_TITLES.get(step, str(step))
    lines += [f"Checkpoint of the **{title}** of rlhf-trl's RLHF pipeline (SFT, reward model, PPO).", ""]
    if merged_from_adapter:
        lines += ["The LoRA adapter trained in this step is merged into its base model: this is a full model.", ""]
    elif is_adapter:
        lines += ["This repository holds a LoRA adapter; load it on top of the base model below.", ""]
    datasets = run_info.get("datasets") or []
    lineage = {
        "base model": run_info.get("base_model"),
        "step": step,
        "datasets": ", ".join(str(name) for name in datasets) or "(none recorded)",
        "data split": run_info.get("data_split"),
        "LoRA": run_info.get("lora"),
        "wall time (s)": run_info.get("wall_time_s"),
    }
    lines += ["## Lineage", "", *_table({key: value for key, value in lineage.items() if value is not None}), ""]
    hyperparameters = run_info.get("hyperparameters") or {}
    key_values = {name: hyperparameters[name] for name in KEY_HYPERPARAMETERS if name in hyperparameters}
    if key_values:
        lines += ["## Key hyperparameters", "", *_table(key_values), ""]
    if hyperparameters:
        lines += [
            "<details><summary>All hyperparameters</summary>",
            "",
            *_table(hyperparameters),
            "",
            "</details>",
            "",
        ]
    final_metrics = run_info.get("final_metrics") or {}
    if final_metrics:
        lines += ["## Final metrics", "", *_table(final_metrics), ""]
    plots = sorted((folder / "plots").glob("*.png")) if (folder / "plots").is_dir() else []
    if plots:
        lines += ["## Training curves", ""] + [f"![{path.stem}](plots/{path.name})" for path in plots] + [""]
    if run_info.get("command"):
        lines += ["## Command", "", *code_block(str(run_info["command"]), "bash"), ""]
    lines += ["## Usage", "", *usage_snippet(step, is_adapter and not merged_from_adapter), ""]
    return "\n".join(lines)


def write_model_card(output_dir: str | Path, destination: str | Path | None = None, merged_from_adapter=False) -> Path:
    """Write README.md for the checkpoint in ``output_dir`` into ``destination`` (default: ``output_dir``)."""
    output_dir = Path(output_dir)
    path = Path(destination or output_dir) / "README.md"
    path.write_text(render_model_card(output_dir, merged_from_adapter), encoding="utf-8")
    return path
