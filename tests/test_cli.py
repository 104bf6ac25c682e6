"""Every command answers --help, every recipe parses, and bad input stops with a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_trl.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
# The CPU recipes parse as shipped; the GPU recipes (bf16) are parsed with --bf16 false in tests/test_recipes.py.
RECIPES = sorted(path for path in (ROOT / "recipes").glob("tiny*/*.yaml") if path.name != "e2e.yaml")


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
    from rlhf_trl.ppo.estimators import ADVANTAGE_ESTIMATORS

    # Recipes named after an advantage estimator (grpo.yaml, rloo.yaml, ...) are step-3 recipes.
    step = "ppo" if recipe.stem in ADVANTAGE_ESTIMATORS else recipe.stem.split("-")[0]
    training = {"sft": SFTConfig, "reward": RewardConfig, "ppo": PPOConfig}[step]
    return (ModelConfig, DataArguments, training, RunArguments)


@pytest.fixture
def torch_settings_restored():
    """Parsing a recipe applies its thread count and determinism to this process: undo that for later tests."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.mark.usefixtures("torch_settings_restored")
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_recipe_parses(recipe):
    from rlhf_trl.scripts.common import parse_step_arguments

    parsed = parse_step_arguments(step_types(recipe), ["--config", str(recipe)])
    model_args, data_args, training_args, _ = parsed
    assert model_args.model_name_or_path
    assert data_args.datasets
    assert training_args.output_dir


@pytest.mark.usefixtures("torch_settings_restored")
@pytest.mark.parametrize("step", ["sft", "reward", "ppo"])
def test_tiny_recipes_fix_threads(step):
    """The same numbers on every machine need the same summation order: one thread whatever the core count."""
    import torch

    from rlhf_trl.scripts.common import parse_step_arguments

    recipe = ROOT / "recipes" / "tiny" / f"{step}.yaml"
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    *_, run_args = parse_step_arguments(step_types(recipe), ["--config", str(recipe)])
    assert run_args.num_threads == 1
    assert torch.get_num_threads() == 1


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


def test_recipes_command_lists_shipped_recipes_and_configs_one_line_each():
    from rlhf_trl.resources import accelerate_config_names, recipe_names

    result = run_cli("recipes")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for name in [*recipe_names(), *accelerate_config_names()]:
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        assert len(line.split()) > 2, f"{name} has no description: {line!r}"
    assert "tiny" in recipe_names() and "zero2" in accelerate_config_names()


def test_recipes_ship_in_the_package_and_the_repository_shows_them():
    from rlhf_trl.resources import RECIPES_DIR, recipe_dir

    assert RECIPES_DIR.parent.name == "rlhf_trl"
    assert (ROOT / "recipes").is_symlink() and (ROOT / "recipes").resolve() == RECIPES_DIR.resolve()
    assert recipe_dir("tiny") == RECIPES_DIR / "tiny"


def test_unknown_recipe_is_one_line_naming_the_shipped_ones(tmp_path):
    result = run_cli("e2e", "--recipe", "huge", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "'huge'" in result.stderr and "tiny" in result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_accelerate_config_is_one_line_naming_the_shipped_ones(tmp_path):
    for command in (["sft", "--config", "tiny/sft.yaml"], ["e2e", "--output-dir", str(tmp_path / "out")]):
        result = run_cli(*command, "--accelerate_config", "zero9")
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
        assert "'zero9'" in result.stderr and "zero2" in result.stderr and "cpu" in result.stderr


def test_step_with_accelerate_config_runs_under_accelerate_launch(monkeypatch, tmp_path):
    import subprocess as subprocess_module

    from rlhf_trl import cli
    from rlhf_trl.resources import ACCELERATE_CONFIGS_DIR, RECIPES_DIR

    launched = []
    monkeypatch.setattr(subprocess_module, "call", lambda command: launched.append(command) or 0)
    monkeypatch.chdir(tmp_path)  # shipped names work from any folder
    assert (
        cli.main(["ppo", "--config", "recipes/tiny/ppo.yaml", "--accelerate_config", "zero2", "--max_steps", "1"]) == 0
    )
    (command,) = launched
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--config_file") + 1] == str(ACCELERATE_CONFIGS_DIR / "zero2.yaml")
    step = command[command.index("-m", 3) + 1 :]
    assert step == ["rlhf_trl.scripts.ppo", "--config", str(RECIPES_DIR / "tiny" / "ppo.yaml"), "--max_steps", "1"]

    own = tmp_path / "mine.yaml"
    own.write_text("compute_environment: LOCAL_MACHINE\n")
    assert cli.main(["sft", "--accelerate_config=" + str(own), "--config", "tiny/sft"]) == 0
    assert launched[1][launched[1].index("--config_file") + 1] == str(own)
    assert launched[1][-2:] == ["--config", str(RECIPES_DIR / "tiny" / "sft.yaml")]


@pytest.mark.slow
def test_step_runs_through_accelerate_launch_for_real(tmp_path, tiny_base_dir):
    output = tmp_path / "out"
    result = run_cli(
        "sft",
        "--accelerate_config",
        "cpu",
        "--config",
        "tiny/sft.yaml",
        "--model_name_or_path",
        str(tiny_base_dir),
        "--output_dir",
        str(output),
        "--max_steps",
        "2",
        "--plots",
        "false",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "accelerate.commands.launch" in result.stderr.splitlines()[0]
    assert (output / "config.json").exists() and (output / "run_info.json").exists()


def test_model_loading_draws_no_progress_bar_in_reading_commands(tmp_path, tiny_base_dir, capfd):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    from rlhf_trl.cli import quiet_weight_loading

    previous = transformers_logging.set_tqdm_hook(None)
    try:
        transformers_logging.enable_progress_bar()
        AutoModelForCausalLM.from_pretrained(tiny_base_dir)
        assert "Loading weights" in capfd.readouterr().err, "the bar this test hides must exist"
        quiet_weight_loading()
        AutoModelForCausalLM.from_pretrained(tiny_base_dir)
        assert "Loading weights" not in capfd.readouterr().err
    finally:
        transformers_logging.set_tqdm_hook(previous)
