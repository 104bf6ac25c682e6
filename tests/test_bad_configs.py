"""Every bad configuration stops before any model loads: one ``error:`` line naming the field or file, exit code 2,
no traceback. Most cases run in-process through the step scripts' ``cli(argv)``; the model path in the base configs
does not exist, so a bad value that slipped through validation would fail with a different message."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_trl.configs import MODEL_RANGES, TRAINING_RANGES, Range
from rlhf_trl.ppo.config_fields import PPO_RANGES
from rlhf_trl.scripts import e2e, ppo, reward, sft

ROOT = Path(__file__).resolve().parents[1]
MISSING_MODEL = "/nonexistent/rlhf-trl-model"
SCRIPTS = {"sft": sft, "reward": reward, "ppo": ppo}
BASE = {
    "sft": {"model_name_or_path": MISSING_MODEL, "datasets": ["tiny-sort"], "report_to": "none", "bf16": False},
    "reward": {"model_name_or_path": MISSING_MODEL, "datasets": ["tiny-sort"], "report_to": "none", "bf16": False},
    "ppo": {
        "model_name_or_path": MISSING_MODEL,
        "reward_model_path": MISSING_MODEL,
        "datasets": ["tiny-sort"],
        "report_to": "none",
        "bf16": False,
    },
}
STEP_FIELDS = {
    "sft": {**TRAINING_RANGES, **MODEL_RANGES},
    "reward": {**TRAINING_RANGES, **MODEL_RANGES},
    "ppo": {**TRAINING_RANGES, **MODEL_RANGES, **PPO_RANGES},
}
# Fields of TRAINING_RANGES that a step's config does not have.
NOT_IN_STEP = {
    "sft": {"center_rewards_coefficient"},
    "reward": set(),
    "ppo": {"max_length", "center_rewards_coefficient"},
}
CANDIDATES = (0, -1, math.nan, 10**30, 1e30)


def generated_cases():
    """(step, field, value) for every numeric field and every candidate value its Range refuses, plus a value of
    the wrong type for each field."""
    cases = []
    for step, ranges in STEP_FIELDS.items():
        for name, allowed in ranges.items():
            if name in NOT_IN_STEP[step]:
                continue
            for value in CANDIDATES:
                refused = (isinstance(value, float) and math.isnan(value)) or not allowed.allows(value)
                if refused:
                    cases.append((step, name, value))
            cases.append((step, name, [1, 2]))  # wrong type
    return cases


GENERATED = generated_cases()


def run_cli(module, argv, capsys) -> tuple[int, str]:
    code = module.cli(argv)
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, stderr: str, *expected: str) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def write_config(tmp_path: Path, step: str, **overrides) -> Path:
    path = tmp_path / f"{step}.yaml"
    config = {**BASE[step], "output_dir": str(tmp_path / "out"), **overrides}
    path.write_text(yaml.safe_dump(config))
    return path


def test_at_least_a_hundred_generated_cases():
    assert len(GENERATED) >= 100
    steps = {step for step, _, _ in GENERATED}
    assert steps == {"sft", "reward", "ppo"}


@pytest.mark.parametrize("step", sorted(SCRIPTS))
def test_the_base_configs_get_past_validation(step, tmp_path, capsys):
    """Control: without a bad value the run reaches the model check, so the generated cases test validation."""
    config = write_config(tmp_path, step)
    code, stderr = run_cli(SCRIPTS[step], ["--config", str(config)], capsys)
    assert_one_line_error(code, stderr, MISSING_MODEL, "does not exist")


def test_yaml_numbers_written_as_text_are_read_like_flags(tmp_path, capsys):
    """YAML 1.1 reads ``1e-5`` as a string; it is a valid learning rate all the same."""
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({**BASE["sft"], "output_dir": str(tmp_path / "out")}) + "learning_rate: 1e-5\n")
    assert yaml.safe_load(config.read_text())["learning_rate"] == "1e-5"
    code, stderr = run_cli(sft, ["--config", str(config)], capsys)
    assert_one_line_error(code, stderr, MISSING_MODEL, "does not exist")
    config.write_text(config.read_text().replace("1e-5", "fast"))
    code, stderr = run_cli(sft, ["--config", str(config)], capsys)
    assert_one_line_error(code, stderr, "learning_rate")


@pytest.mark.parametrize(("step", "name", "value"), GENERATED, ids=lambda item: str(item))
def test_bad_numeric_value_is_one_line_naming_the_field(step, name, value, tmp_path, capsys):
    config = write_config(tmp_path, step, **{name: value})
    code, stderr = run_cli(SCRIPTS[step], ["--config", str(config)], capsys)
    assert_one_line_error(code, stderr, name)
    assert not (tmp_path / "out").exists(), "validation must come before the output folder is touched"


# The nonsense values the issue found accepted silently, and the tracebacks it found: each as a command-line flag.
NAMED_CASES = [
    ("sft", ["--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
    ("reward", ["--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
    ("sft", ["--num_train_epochs", "-3"], "num_train_epochs"),
    ("sft", ["--learning_rate", "nan"], "learning_rate"),
    ("sft", ["--learning_rate", "abc"], "learning_rate"),
    ("ppo", ["--generation_batches", "0"], "generation_batches"),
    ("ppo", ["--temperature", "0"], "temperature"),
    ("ppo", ["--max_new_tokens", "0"], "max_new_tokens"),
    ("ppo", ["--top_p", "0"], "top_p"),
    ("ppo", ["--max_prompt_length", "-2"], "max_prompt_length"),
    ("ppo", ["--reward_clip", "-1"], "reward_clip"),
    ("ppo", ["--ratio_threshold", "-1"], "ratio_threshold"),
    ("ppo", ["--ratio_threshold", "1"], "ratio_threshold"),
    ("ppo", ["--min_new_tokens", "9", "--max_new_tokens", "4"], "min_new_tokens"),
    ("ppo", ["--num_mini_batches", "3"], "num_mini_batches"),
    ("ppo", ["--generation_kwargs", "{bad json"], "generation_kwargs"),
    ("ppo", ["--generation_kwargs", "[1, 2]"], "generation_kwargs"),
    ("ppo", ["--generation_kwargs", '{"no_such_field": 1}'], "no_such_field"),
    ("ppo", ["--generation_kwargs", '{"temperature": 0.5}'], "temperature"),
    ("ppo", ["--generation_kwargs", '{"repetition_penalty": -1.0}'], "repetition_penalty"),
    ("ppo", ["--generation_kwargs", '{"num_beams": 4}'], "num_beams"),
    ("ppo", ["--generation_kwargs", '{"typical_p": "high"}'], "typical_p"),
    ("ppo", ["--generation_kwargs", '{"length_penalty": 2.0}'], "length_penalty"),
    ("ppo", ["--reward_funcs", "no_such_module:score"], "no_such_module"),
    ("ppo", ["--reward_funcs", "rlhf_trl.tiny.task:no_such_function"], "no_such_function"),
    ("ppo", ["--reward_funcs", "just_a_name"], "just_a_name"),
    ("ppo", ["--reward_weights", "nan"], "reward_weights"),
    ("sft", ["--gold_scorer", "no_such_module:gold"], "gold_scorer"),
    ("ppo", ["--kl_estimator", "k9"], "kl_estimator"),
    ("ppo", ["--adaptive_kl", "--kl_target", "-1"], "kl_target"),
    ("sft", ["--divergence_factor", "0.5"], "divergence_factor"),
    ("sft", ["--eval_split_ratio", "1.5"], "eval_split_ratio"),
    ("sft", ["--data_split", "1,2"], "data_split"),
    ("sft", ["--max_train_samples", "0"], "max_train_samples"),
    ("sft", ["--data_split_seed", "-1"], "data_split_seed"),
    ("sft", ["--no_such_flag", "1"], "no_such_flag"),
    # Advantage estimators: unknown names, groups of one, settings that only apply to another estimator.
    ("ppo", ["--advantage_estimator", "ppo"], "advantage_estimator"),
    ("ppo", ["--loss_type", "sum"], "loss_type"),
    ("ppo", ["--advantage_estimator", "grpo"], "num_generations"),
    ("ppo", ["--advantage_estimator", "dr_grpo", "--num_generations", "1"], "num_generations"),
    ("ppo", ["--advantage_estimator", "rloo"], "num_generations"),
    ("ppo", ["--advantage_estimator", "reinforce_pp_baseline"], "num_generations"),
    *[
        ("ppo", ["--advantage_estimator", estimator, "--num_generations", "2", *flags], flags[0][2:])
        for estimator in ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
        for flags in (
            ["--vf_coef", "0.5"],
            ["--cliprange_value", "0.3"],
            ["--critic_learning_rate", "1e-5"],
            ["--critic_lr_scheduler_type", "cosine"],
            ["--value_model_path", MISSING_MODEL],
            ["--critic_lora", "false"],
            ["--lam", "0.9"],
            ["--whiten_rewards", "true"],
        )
    ],
    ("ppo", ["--advantage_estimator", "grpo", "--num_generations", "2", "--gamma", "0.9"], "gamma"),
    ("ppo", ["--advantage_estimator", "rloo", "--num_generations", "2", "--gamma", "0.9"], "gamma"),
    ("ppo", ["--advantage_estimator", "grpo", "--num_generations", "2", "--kl_in_reward", "true"], "kl_in_reward"),
    ("ppo", ["--advantage_estimator", "dr_grpo", "--num_generations", "2", "--kl_in_reward"], "kl_in_reward"),
    ("ppo", ["--use_bias_correction_kl", "true"], "use_bias_correction_kl"),  # gae: the KL is in the reward
    (
        "ppo",
        ["--advantage_estimator", "rloo", "--num_generations", "2", "--use_bias_correction_kl", "true"],
        "use_bias_correction_kl",
    ),
    (
        "ppo",
        ["--max_tokens_per_micro_batch", "64", "--attn_implementation", "flash_attention_2"],
        "max_tokens_per_micro_batch",
    ),
    (
        "ppo",
        ["--num_generations", "2", "--per_device_train_batch_size", "3", "--num_mini_batches", "2"],
        "num_mini_batches",
    ),
    (
        "ppo",
        [
            "--advantage_estimator",
            "grpo",
            "--num_generations",
            "3",
            "--per_device_train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "4",
        ],
        "gradient_accumulation_steps",
    ),  # fmt: skip
]


@pytest.mark.parametrize(
    "flags",
    [
        ["--advantage_estimator", "reinforce_pp", "--gamma", "0.9"],
        ["--advantage_estimator", "rloo", "--num_generations", "2", "--kl_in_reward", "false", "--kl_coef", "0.2"],
        ["--advantage_estimator", "grpo", "--num_generations", "2", "--kl_coef", "0.05", "--kl_in_reward", "false"],
        ["--advantage_estimator", "grpo", "--num_generations", "2", "--use_bias_correction_kl", "true"],
        ["--kl_in_reward", "false", "--use_bias_correction_kl", "true"],
        ["--advantage_estimator", "gae", "--num_generations", "2", "--loss_type", "sequence_mean"],
        ["--max_tokens_per_micro_batch", "64", "--attn_implementation", "sdpa"],
    ],
    ids=lambda flags: " ".join(flags),
)
def test_settings_an_estimator_uses_get_past_validation(flags, tmp_path, capsys):
    """Control for the estimator cases above: the same options where they apply reach the model check."""
    config = write_config(tmp_path, "ppo")
    code, stderr = run_cli(ppo, ["--config", str(config), *flags], capsys)
    assert_one_line_error(code, stderr, MISSING_MODEL, "does not exist")


@pytest.mark.parametrize(("step", "flags", "field"), NAMED_CASES, ids=lambda item: str(item))
def test_named_bad_flags(step, flags, field, tmp_path, capsys):
    config = write_config(tmp_path, step)
    code, stderr = run_cli(SCRIPTS[step], ["--config", str(config), *flags], capsys)
    assert_one_line_error(code, stderr, field)


def test_reward_module_that_fails_to_import_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_reward.py").write_text("def score(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_config(tmp_path, "ppo", reward_funcs=["broken_reward:score"])
    code, stderr = run_cli(ppo, ["--config", str(config)], capsys)
    assert_one_line_error(code, stderr, "broken_reward", "SyntaxError")


YAML_CASES = {
    "missing": (None, "does not exist"),
    "broken": ("model_name_or_path: [unclosed\n", "not valid YAML"),
    "tab-indented": ("a:\n\tb: 1\n", "not valid YAML"),
    "a list": ("- 1\n- 2\n", "YAML mapping"),
    "a scalar": ("just text\n", "YAML mapping"),
    "empty": ("", "YAML mapping"),
    "unknown key": (None, "learning_rat"),
}


@pytest.mark.parametrize("step", sorted(SCRIPTS))
@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_yaml_problems_are_reported_as_such(step, case, tmp_path, capsys):
    text, expected = YAML_CASES[case]
    path = tmp_path / "config.yaml"
    if case == "unknown key":
        path = write_config(tmp_path, step, learning_rat=0.1)
    elif text is not None:
        path.write_text(text)
    code, stderr = run_cli(SCRIPTS[step], ["--config", str(path), "--output_dir", str(tmp_path / "out")], capsys)
    line = assert_one_line_error(code, stderr, expected)
    if case != "unknown key":
        assert str(path) in line


@pytest.fixture()
def model_copy(tiny_base_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_base_dir, target)
    return target


def test_truncated_safetensors_is_one_line_naming_the_file(model_copy, tmp_path, capsys):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    config = write_config(tmp_path, "sft", model_name_or_path=str(model_copy))
    code, stderr = run_cli(sft, ["--config", str(config)], capsys)
    assert_one_line_error(code, stderr, "model_name_or_path", str(weights), "truncated")


def test_damaged_safetensors_header_is_one_line(model_copy, tmp_path, capsys):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    config = write_config(tmp_path, "ppo", reward_model_path=str(model_copy))
    code, stderr = run_cli(ppo, ["--config", str(config)], capsys)
    assert_one_line_error(code, stderr, "reward_model_path", str(weights))


def test_missing_weight_shard_is_one_line(model_copy, tmp_path, capsys):
    index = {"metadata": {}, "weight_map": {"a.weight": "model-00002-of-00002.safetensors"}}
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    config = write_config(tmp_path, "reward", model_name_or_path=str(model_copy))
    code, stderr = run_cli(reward, ["--config", str(config)], capsys)
    assert_one_line_error(code, stderr, "model-00002-of-00002.safetensors")


def test_model_folder_without_tokenizer_is_one_line(model_copy, tmp_path, capsys):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        (model_copy / name).unlink(missing_ok=True)
    config = write_config(tmp_path, "sft", model_name_or_path=str(model_copy))
    code, stderr = run_cli(sft, ["--config", str(config)], capsys)
    assert_one_line_error(code, stderr, str(model_copy), "tokenizer")


def test_fewer_prompts_than_one_batch_says_how_many(tiny_base_dir, tiny_reward_dir, tmp_path, capsys):
    config = write_config(
        tmp_path,
        "ppo",
        model_name_or_path=str(tiny_base_dir),
        reward_model_path=str(tiny_reward_dir),
        max_train_samples=3,
        per_device_train_batch_size=8,
        use_cpu=True,
    )
    code, stderr = run_cli(ppo, ["--config", str(config)], capsys)
    assert_one_line_error(code, stderr, "3 prompt", "needs 8")


def test_training_diverged_error_is_one_line_exit_2(capsys):
    from rlhf_trl.guards import InvalidRewardError, TrainingDivergedError
    from rlhf_trl.scripts.common import run_step

    def diverging(argv):
        raise TrainingDivergedError("step 3: policy loss is nan; stopping (last checkpoint kept)")

    def bad_reward(argv):
        raise InvalidRewardError("step 1: reward source f returned nan for sample 0")

    for main in (diverging, bad_reward):
        code = run_step(main, [])
        assert_one_line_error(code, capsys.readouterr().err, "step ")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--actor-zero-stage", "1"], "--actor-zero-stage"),
        (["--reward-zero-stage", "1", "--step", "2"], "--reward-zero-stage"),
        (["--num-processes", "0"], "--num-processes"),
        (["--samples", "-1"], "--samples"),
        (["--step", "4"], "--step"),
        (["--deployment-type", "laptop"], "--deployment-type"),
        (["--actor-zero-stage", "x"], "--actor-zero-stage"),
        (["--recipe", "no-such-recipe"], "no-such-recipe"),
        (["--algorithm", "ppo2"], "--algorithm"),
    ],
)
def test_e2e_bad_flags(flags, expected, tmp_path, capsys):
    code = e2e.main([*flags, "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(code, capsys.readouterr().err, expected)
    assert not (tmp_path / "out").exists()


def test_e2e_broken_recipe_defaults(tmp_path, capsys):
    recipe = tmp_path / "recipe"
    shutil.copytree(ROOT / "recipes" / "tiny", recipe)
    (recipe / "e2e.yaml").write_text("reward_init: [unclosed\n")
    code = e2e.main(["--recipe", str(recipe), "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(code, capsys.readouterr().err, "e2e.yaml", "not valid YAML")


def test_range_descriptions_read_plainly():
    assert Range(minimum=1).describe() == ">= 1"
    assert Range(above=0, maximum=1).describe() == "> 0 and <= 1"
    assert Range(minimum=1, also=(-1,), optional=True).describe() == ">= 1 (or -1, unset)"
    assert not Range(minimum=0).allows(math.inf) and Range(optional=True).allows(None)


@pytest.mark.parametrize(
    ("step", "flags", "field"),
    [("ppo", ["--temperature", "0"], "temperature"), ("sft", ["--per_device_train_batch_size", "0"], "per_device")],
)
def test_through_the_installed_command(step, flags, field, tmp_path):
    """The same as a user sees it: a separate process, the top-level command."""
    config = write_config(tmp_path, step)
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_trl.cli", step, "--config", str(config), *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(result.returncode, result.stderr, field)
