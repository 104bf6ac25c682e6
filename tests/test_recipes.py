"""Every shipped recipe: a fast parse test of each YAML, and a run of each recipe (all three steps, every variant)
for two optimizer steps per step on CPU, with its Hub models replaced by tiny random models of the same
architecture and tokenizer conventions and its datasets by small local files in the same formats."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlhf_trl.resources import ACCELERATE_CONFIGS_DIR as ACCELERATE_CONFIGS
from rlhf_trl.resources import RECIPES_DIR as RECIPES_ROOT

ROOT = Path(__file__).resolve().parents[1]

STEPS = ("sft", "reward", "ppo")
STEP_OUTPUT_FOLDERS = {"sft": "step1_sft", "reward": "step2_reward", "ppo": "step3_ppo"}
# Recipes with their own tests (tiny-sort, tiny-base): test_e2e.py and test_lora_8bit.py run them.
RUN_ELSEWHERE = {"tiny", "tiny-chat"}  # each has its own end-to-end quality test

# The model each recipe names on the Hub -> the layout of its tiny random stand-in (rlhf_trl.tiny.chat_model).
MODEL_STAND_INS = {
    "facebook/opt-1.3b": "opt",
    "facebook/opt-13b": "opt",
    "facebook/opt-350m": "opt-350m",
    "Qwen/Qwen2.5-0.5B-Instruct": "qwen2",
}
# The accelerate config a recipe's README launches a step with -> the CPU config that stands in for it.
CPU_CONFIGS = {
    "single_gpu.yaml": "cpu.yaml",
    "zero2.yaml": "zero2_cpu.yaml",
    "zero3.yaml": "zero3_cpu.yaml",
    "zero3_offload.yaml": "zero3_cpu.yaml",
}
RECORDS_PER_DATASET = 96


def recipe_folders() -> list[Path]:
    return sorted(path for path in RECIPES_ROOT.iterdir() if path.is_dir())


def recipe_yamls() -> list[Path]:
    return sorted(path for folder in recipe_folders() for path in folder.glob("*.yaml"))


def step_and_variant(path: Path) -> tuple[str, str | None]:
    """``ppo-8bit-lora.yaml`` -> ("ppo", "8bit-lora"); ``e2e.yaml`` -> ("e2e", None); ``grpo.yaml`` (named after an
    advantage estimator, what ``rlhf-trl e2e --algorithm grpo`` runs) -> ("ppo", None)."""
    from rlhf_trl.ppo.estimators import ADVANTAGE_ESTIMATORS

    if path.stem in ADVANTAGE_ESTIMATORS:
        return "ppo", None
    step, _, variant = path.stem.partition("-")
    return step, variant or None


def algorithm_yamls() -> list[Path]:
    from rlhf_trl.ppo.estimators import ADVANTAGE_ESTIMATORS

    return [path for path in recipe_yamls() if path.stem in ADVANTAGE_ESTIMATORS]


def step_dataclasses(step: str) -> tuple:
    """The dataclasses each step script parses (model, data, training, run options), in the scripts' order."""
    from trl import ModelConfig, RewardConfig, SFTConfig

    from rlhf_trl.configs import RunArguments
    from rlhf_trl.data import DataArguments
    from rlhf_trl.ppo.config import PPOConfig

    training = {"sft": SFTConfig, "reward": RewardConfig, "ppo": PPOConfig}[step]
    return ModelConfig, DataArguments, training, RunArguments


def recipe_runs() -> list[tuple[str, str | None]]:
    """(folder, variant) pairs that form a complete three-step recipe, outside RUN_ELSEWHERE."""
    runs = []
    for folder in recipe_folders():
        if folder.name in RUN_ELSEWHERE:
            continue
        variants = {step_and_variant(path)[1] for path in folder.glob("sft*.yaml")}
        runs += [(folder.name, variant) for variant in sorted(variants, key=lambda name: name or "")]
    return runs


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def recipe_path(folder: str, step: str, variant: str | None) -> Path:
    return RECIPES_ROOT / folder / (f"{step}-{variant}.yaml" if variant else f"{step}.yaml")


# Fast checks of every YAML ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", recipe_yamls(), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_key_is_an_option_of_its_step(path):
    step, _ = step_and_variant(path)
    keys = set(read_yaml(path))
    if step == "e2e":
        from rlhf_trl.scripts.e2e import build_parser

        known = {action.dest for action in build_parser()._actions}
    else:
        assert step in STEPS, f"{path.name}: a recipe file is named <step>[-<variant>].yaml or e2e.yaml"
        known = {field.name for cls in step_dataclasses(step) for field in dataclasses.fields(cls)}
    assert keys <= known, f"{path}: unknown keys {sorted(keys - known)}"


@pytest.mark.parametrize(
    "path", [path for path in recipe_yamls() if path.stem != "e2e"], ids=lambda path: f"{path.parent.name}/{path.name}"
)
def test_every_step_recipe_parses_with_its_script_parser(path):
    from trl import TrlParser

    step, _ = step_and_variant(path)
    overrides = [] if torch.cuda.is_available() else ["--bf16", "false"]  # bf16 is refused without a GPU
    model_args, data_args, training_args, _ = TrlParser(step_dataclasses(step)).parse_args_and_config(
        args=["--config", str(path), *overrides]
    )
    recipe = read_yaml(path)
    assert model_args.model_name_or_path == recipe["model_name_or_path"]
    assert data_args.datasets == recipe["datasets"]
    assert training_args.learning_rate == pytest.approx(float(recipe["learning_rate"]))


@pytest.mark.parametrize("folder", recipe_folders(), ids=lambda folder: folder.name)
def test_each_variant_is_complete_and_chains_its_own_outputs(folder):
    """Every variant has all three steps; PPO starts from the same variant's step-1 and step-2 outputs; e2e.yaml
    holds only e2e flags."""
    from rlhf_trl.scripts.e2e import parse_arguments, recipe_dir

    step_files = [path for path in folder.glob("*.yaml") if path.stem != "e2e" and path not in algorithm_yamls()]
    variants = {step_and_variant(path)[1] for path in step_files}
    for variant in variants:
        recipe_dir(str(folder), variant)  # exits with an error naming the missing files
        sft, reward, ppo = (read_yaml(recipe_path(folder.name, step, variant)) for step in STEPS)
        if folder.name not in RUN_ELSEWHERE:
            assert ppo["model_name_or_path"] == sft["output_dir"], f"{folder.name} {variant}: actor is not step 1's"
            assert ppo["reward_model_path"] == reward["output_dir"], f"{folder.name} {variant}: reward is not step 2's"
            assert len({sft["output_dir"], reward["output_dir"], ppo["output_dir"]}) == 3
    parse_arguments(["--recipe", str(folder)])


@pytest.mark.parametrize("path", algorithm_yamls(), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_algorithm_recipe_parses_with_its_estimator_and_ppo_budget(path):
    """``<estimator>.yaml`` parses as a step-3 config of that estimator, chains the same step-1 and step-2 outputs as
    ppo.yaml and keeps its sample budget: completions per step (prompts x num_generations) and steps."""
    from trl import TrlParser

    overrides = [] if torch.cuda.is_available() else ["--bf16", "false"]
    _, data_args, training_args, _ = TrlParser(step_dataclasses("ppo")).parse_args_and_config(
        args=["--config", str(path), *overrides]
    )
    assert training_args.advantage_estimator == path.stem
    ppo_recipe = read_yaml(path.parent / "ppo.yaml")
    recipe = read_yaml(path)
    for key in ("model_name_or_path", "reward_model_path", "datasets", "max_steps", "max_new_tokens"):
        assert recipe[key] == ppo_recipe[key], key
    ppo_completions = ppo_recipe["per_device_train_batch_size"] * ppo_recipe.get("num_generations", 1)
    assert training_args.local_rollout_batch_size == ppo_completions
    assert f"{path.stem}.yaml" in (path.parent / "README.md").read_text()


@pytest.mark.parametrize(
    "folder", [folder for folder in recipe_folders() if folder.name not in RUN_ELSEWHERE], ids=lambda f: f.name
)
def test_readme_names_hardware_commands_and_files_that_exist(folder):
    readme = (folder / "README.md").read_text()
    for heading in ("Hardware", "Commands", "Memory and time"):
        assert f"## {heading}" in readme, f"{folder.name}/README.md lacks a '## {heading}' section"
    assert f"rlhf-trl e2e --recipe {folder.name}" in readme
    assert "accelerate launch --config_file accelerate_configs/" in readme
    for mentioned in re.findall(r"\b((?:recipes|accelerate_configs)/[\w./-]+\.yaml)", readme):
        assert (ROOT / mentioned).exists(), f"{folder.name}/README.md names {mentioned}, which does not exist"


@pytest.mark.parametrize("family", sorted(set(MODEL_STAND_INS.values())))
def test_stand_in_models_have_the_real_layout_and_tokenizer_conventions(family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_trl.tiny.chat_model import build_tiny_random_model

    path = build_tiny_random_model(tmp_path / family, family)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).config.num_labels == 1
    text = "Human: sort 3 1 4 Assistant: 1 3 4"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text  # byte-level BPE
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    if family.startswith("opt"):
        assert type(model).__name__ == "OPTForCausalLM"
        assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("</s>", "</s>", "<pad>")
        assert tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]  # OPT's ids
        assert tokenizer(text)["input_ids"][0] == tokenizer.bos_token_id  # OPT prepends </s> to every text
        projected = family == "opt-350m"
        assert (model.config.word_embed_proj_dim < model.config.hidden_size) == projected
        assert model.config.do_layer_norm_before == (not projected)
    else:
        assert type(model).__name__ == "Qwen2ForCausalLM"
        assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "sort 3 1"}], tokenize=False)
        assert rendered == "<|im_start|>user\nsort 3 1<|im_end|>\n"


# Running every recipe on tiny stand-ins ------------------------------------------------------------------------------


def _pair_rows(dataset: str, count: int) -> list[dict]:
    """Preference pairs of the tiny task in the raw schema of a DS-Chat dataset (what its adapter reads)."""
    from rlhf_trl.tiny import task

    rows = []
    # The tiny task's rejected answer is sometimes empty, which DS-Chat's datasets never have.
    records = [record for record in task.make_records("reward", 2 * count) if record["rejected"].strip()][:count]
    for record in records:
        question = record["prompt"].removeprefix("Human:").removesuffix("Assistant:").strip()
        if dataset == "Dahoas/synthetic-instruct-gptj-pairwise":  # a bare instruction
            rows.append({"prompt": question, "chosen": record["chosen"].strip(), "rejected": record["rejected"]})
        elif dataset == "yitingxie/rlhf-reward-datasets":  # answers repeat 'Assistant:'
            rows.append(
                {
                    "prompt": f"\n\nHuman: {question}\n\n",
                    "chosen": "Assistant:" + record["chosen"],
                    "rejected": "Assistant:" + record["rejected"],
                }
            )
        else:  # Dahoas/rm-static, Dahoas/full-hh-rlhf: the prompt ends with 'Assistant:'
            rows.append(
                {
                    "prompt": f"\n\nHuman: {question}\n\nAssistant:",
                    "response": record["chosen"],
                    "chosen": record["chosen"],
                    "rejected": record["rejected"],
                }
            )
    return rows


def _chat_rows(dataset: str, count: int) -> list[dict]:
    """Conversational records in the layout of a TRL-format Hub dataset."""
    from rlhf_trl.tiny.chat_model import conversational_records

    if dataset == "trl-lib/Capybara":  # multi-turn chats: {"messages": [...]}
        return [
            {"messages": record["prompt"] + record["completion"]} for record in conversational_records("sft", count)
        ]
    if dataset == "trl-lib/ultrafeedback_binarized":  # implicit prompt: both conversations start with the user turn
        pairs = [record for record in conversational_records("reward", 2 * count) if record["rejected"][0]["content"]]
        return [
            {"chosen": record["prompt"] + record["chosen"], "rejected": record["prompt"] + record["rejected"]}
            for record in pairs[:count]
        ]
    raise KeyError(dataset)


def local_dataset(dataset: str, folder: Path) -> str:
    """A ``--datasets`` entry standing in for ``dataset``: a DS-Chat name reads a local copy through its own adapter
    (``name@file``); a TRL-format Hub id becomes a local file of the same records."""
    from rlhf_trl.data.registry import get_adapter

    path = folder / (dataset.replace("/", "__") + ".jsonl")
    if get_adapter(dataset) is not None:
        rows, spec = _pair_rows(dataset, RECORDS_PER_DATASET), f"{dataset}@{path}"
    else:
        try:
            rows, spec = _chat_rows(dataset, RECORDS_PER_DATASET), str(path)
        except KeyError:
            pytest.fail(f"no local stand-in for dataset {dataset!r}: add one to _chat_rows or _pair_rows")
    if not path.exists():
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return spec


def stand_in_model(model: str, folder: Path) -> Path:
    from rlhf_trl.tiny.chat_model import build_tiny_random_model

    if model not in MODEL_STAND_INS:
        pytest.fail(f"no tiny stand-in for model {model!r}: add its architecture to MODEL_STAND_INS")
    target = folder / MODEL_STAND_INS[model]
    if not (target / "config.json").exists():
        build_tiny_random_model(target, MODEL_STAND_INS[model])
    return target


def launch_config(folder: str, step: str, variant: str | None) -> str:
    """The CPU stand-in of the accelerate config the recipe's README launches this step with."""
    readme = (RECIPES_ROOT / folder / "README.md").read_text()
    name = recipe_path(folder, step, variant).name
    for line in readme.splitlines():
        found = re.search(
            r"--config_file accelerate_configs/([\w.-]+\.yaml).*--config recipes/[\w.-]+/([\w.-]+)", line
        )
        if found and found.group(2) == name:
            return CPU_CONFIGS[found.group(1)]
    pytest.fail(f"{folder}/README.md has no 'accelerate launch' line for {name}")


def run_step(step: str, config: str, arguments: list[str], log: Path, cache: Path) -> None:
    # Merged LoRA adapters are cached under RLHF_TRL_CACHE: a private one keeps the user's cache clean.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RLHF_TRL_CACHE": str(cache)}
    command = [sys.executable, "-m", f"rlhf_trl.scripts.{step}", *arguments]
    if config != "cpu.yaml":  # DeepSpeed configs go through accelerate, as users launch them
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
        command = [*launcher, str(ACCELERATE_CONFIGS / config), "-m", f"rlhf_trl.scripts.{step}", *arguments]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900, cwd=ROOT)
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{' '.join(command)}\n{(result.stdout + result.stderr)[-4000:]}"


def trained_something(output: Path, base: Path, lora: bool) -> bool:
    """LoRA: some lora_B matrix (zero at the start) is no longer zero; full: some weight differs from the model
    training started from."""
    from safetensors.torch import load_file

    if lora:
        adapter = load_file(output / "adapter_model.safetensors")
        return any(torch.count_nonzero(tensor) for name, tensor in adapter.items() if "lora_B" in name)
    after, before = load_file(output / "model.safetensors"), load_file(base / "model.safetensors")
    shared = [name for name in after if name in before and after[name].dim() == 2]
    return bool(shared) and any(not torch.equal(after[name].float(), before[name].float()) for name in shared)


@pytest.mark.slow
@pytest.mark.parametrize("folder, variant", recipe_runs(), ids=lambda value: value or "full")
def test_recipe_runs_two_steps_per_step_on_tiny_stand_ins(folder, variant, tmp_path_factory):
    shared = tmp_path_factory.getbasetemp() / "recipe-stand-ins"  # models and data shared by all recipes
    shared.mkdir(exist_ok=True)
    work = tmp_path_factory.mktemp(f"{folder}-{variant or 'full'}")
    e2e_defaults = (
        read_yaml(RECIPES_ROOT / folder / "e2e.yaml") if (RECIPES_ROOT / folder / "e2e.yaml").exists() else {}
    )
    outputs = {step: work / STEP_OUTPUT_FOLDERS[step] for step in STEPS}
    starts = {}
    for step in STEPS:
        recipe = read_yaml(recipe_path(folder, step, variant))
        if step == "ppo":
            starts[step] = outputs["sft"]
        elif step == "reward" and e2e_defaults.get("reward_init") == "sft":
            starts[step] = outputs["sft"]
        else:
            starts[step] = stand_in_model(recipe["model_name_or_path"], shared)
        arguments = [
            "--config",
            str(recipe_path(folder, step, variant)),
            "--model_name_or_path",
            str(starts[step]),
            "--datasets",
            *[local_dataset(dataset, shared) for dataset in recipe["datasets"]],
            "--output_dir",
            str(outputs[step]),
            "--max_steps",
            "2",
            "--logging_steps",
            "1",
            "--report_to",
            "none",
            "--plots",
            "false",
        ]
        if not torch.cuda.is_available():
            arguments += ["--bf16", "false"]
        if step == "ppo":
            arguments += ["--reward_model_path", str(outputs["reward"])]
        else:
            arguments += ["--save_strategy", "no"]
        run_step(step, launch_config(folder, step, variant), arguments, work / f"{step}.log", work / "cache")

        info = json.loads((outputs[step] / "run_info.json").read_text())
        assert info["hyperparameters"]["learning_rate"] == pytest.approx(float(recipe["learning_rate"]))
        assert info["hyperparameters"]["max_steps"] == 2
        assert info["lora"] == bool(recipe.get("use_peft")), step
        assert info["quantization"] == ("8-bit" if recipe.get("load_in_8bit") else None), step
        logged_steps = [
            json.loads(line)["step"] for line in (outputs[step] / "metrics.jsonl").read_text().splitlines()
        ]
        assert max(logged_steps) == 2, f"{step}: expected two optimizer steps, logged {sorted(set(logged_steps))}"
        base = outputs["sft"] if step == "ppo" else starts[step]
        assert trained_something(outputs[step], base, bool(recipe.get("use_peft"))), f"{step}: nothing was trained"
        if step == "ppo":
            assert (outputs[step] / "critic").is_dir()
            assert (outputs[step] / "ema").is_dir() == (recipe.get("ema_beta") is not None)
