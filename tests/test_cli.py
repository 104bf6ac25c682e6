"""Every command answers --help, every recipe parses, and bad input stops with a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_trl.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(path for path in (ROOT / "recipes").glob("*/*.yaml") if path.name != "e2e.yaml")


def run_cli(*arguments, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "rlhf_trl.cli", *arguments], capture_output=True, text=True, timeout=timeout
    )


def test_top_level_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command):
    arguments = [command, "--help"] if command != "eval" else [command, "--help"]
    result = run_cli(*arguments)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


def test_unknown_command_is_an_error():
    result = run_cli("train-everything")
    assert result.returncode == 2
    assert "unknown command" in result.stderr


def step_types(recipe: Path):
    from trl import ModelConfig, RewardConfig, SFTConfig

    from rlhf_trl.configs import RunArguments
    from rlhf_trl.data import DataArguments
    from rlhf_trl.ppo.config import PPOConfig

    step = recipe.stem.split("-")[0]
    training = {"sft": SFTConfig, "reward": RewardConfig, "ppo": PPOConfig}[step]
    return (ModelConfig, DataArguments, training, RunArguments)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_recipe_parses(recipe):
    from rlhf_trl.scripts.common import parse_step_arguments

    parsed = parse_step_arguments(step_types(recipe), ["--config", str(recipe)])
    model_args, data_args, training_args, _ = parsed
    assert model_args.model_name_or_path
    assert data_args.datasets
    assert training_args.output_dir


def test_unknown_yaml_key_is_a_one_line_error(tmp_path):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text((ROOT / "recipes/tiny/sft.yaml").read_text() + "learning_rat: 0.1\n")
    result = run_cli("sft", "--config", str(recipe), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "learning_rat" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_path_is_a_one_line_error(tmp_path):
    result = run_cli(
        "sft",
        "--config",
        str(ROOT / "recipes/tiny/sft.yaml"),
        "--output_dir",
        str(tmp_path / "out"),
        "--model_name_or_path",
        str(tmp_path / "no-such-model"),
    )
    assert result.returncode == 2
    assert "no-such-model does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_dataset_without_needed_columns_is_a_one_line_error(tmp_path, tiny_base_dir):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "Human: sort 2 1 Assistant:", "answer": " 1 2"}) + "\n")
    result = run_cli(
        "reward",
        "--config",
        str(ROOT / "recipes/tiny/reward.yaml"),
        "--output_dir",
        str(tmp_path / "out"),
        "--model_name_or_path",
        str(tiny_base_dir),
        "--datasets",
        str(data),
    )
    assert result.returncode == 2
    assert "pairs.jsonl" in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_dataset_is_a_one_line_error(tmp_path, tiny_base_dir):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    result = run_cli(
        "sft",
        "--config",
        str(ROOT / "recipes/tiny/sft.yaml"),
        "--output_dir",
        str(tmp_path / "out"),
        "--model_name_or_path",
        str(tiny_base_dir),
        "--datasets",
        str(data),
    )
    assert result.returncode == 2
    assert "empty" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_non_empty_output_dir_is_never_overwritten_without_the_flag(tmp_path, tiny_base_dir):
    output = tmp_path / "out"
    output.mkdir()
    precious = output / "model.safetensors"
    precious.write_bytes(b"earlier result")
    result = run_cli(
        "sft",
        "--config",
        str(ROOT / "recipes/tiny/sft.yaml"),
        "--output_dir",
        str(output),
        "--model_name_or_path",
        str(tiny_base_dir),
    )
    assert result.returncode == 2
    assert "--overwrite_output_dir" in result.stderr
    assert precious.read_bytes() == b"earlier result"


def test_ppo_without_any_reward_is_a_one_line_error(tmp_path, tiny_base_dir):
    result = run_cli(
        "ppo",
        "--config",
        str(ROOT / "recipes/tiny/ppo.yaml"),
        "--output_dir",
        str(tmp_path / "out"),
        "--model_name_or_path",
        str(tiny_base_dir),
        "--reward_model_path",
        "",
    )
    assert result.returncode == 2
    assert "reward" in result.stderr
