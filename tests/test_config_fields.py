"""No PPOConfig field is silently ignored: every field, inherited ones included, is PPO's own, honoured (and read
somewhere in the package), accepted because Trainer does not read it either, or refused at start when set."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from ppo_helpers import config
from transformers import TrainingArguments

from rlhf_trl.ppo import config_fields
from rlhf_trl.ppo.config import PPOConfig

PACKAGE = Path(config_fields.__file__).resolve().parents[1]
INHERITED = {config_field.name for config_field in dataclasses.fields(TrainingArguments)}

# A value different from the default, for each refused field (the walk below checks every one is refused).
NON_DEFAULT = {
    "lr_scheduler_kwargs": '{"power": 2}',
    "optim_target_modules": ["q_proj"],
    "average_tokens_across_devices": False,
    "label_smoothing_factor": 0.1,
    "bf16_full_eval": True,
    "fp16_full_eval": True,
    "tf32": True,
    "activation_checkpointing": True,
    "activation_checkpointing_kwargs": {"a": 1},
    "gradient_checkpointing_kwargs": {"use_reentrant": False},
    "torch_compile": True,
    "torch_compile_backend": "inductor",
    "torch_compile_mode": "default",
    "use_liger_kernel": True,
    "liger_kernel_config": {"rope": True},
    "use_cache": True,
    "neftune_noise_alpha": 5.0,
    "torch_empty_cache_steps": 10,
    "auto_find_batch_size": True,
    "logging_first_step": True,
    "logging_nan_inf_filter": False,
    "include_num_input_tokens_seen": "all",
    "log_level": "info",
    "log_level_replica": "info",
    "log_on_each_node": False,
    "trackio_space_id": "user/space",
    "trackio_bucket_id": "bucket",
    "trackio_static_space_id": "user/static",
    "eval_delay": 2,
    "per_device_eval_batch_size": 4,
    "prediction_loss_only": True,
    "eval_on_start": True,
    "eval_do_concat_batches": False,
    "eval_use_gather_object": True,
    "eval_accumulation_steps": 2,
    "include_for_metrics": ["inputs"],
    "batch_eval_metrics": True,
    "save_only_model": True,
    "save_on_each_node": True,
    "enable_jit_checkpoint": True,
    "hub_always_push": True,
    "hub_revision": "dev",
    "load_best_model_at_end": True,
    "metric_for_best_model": "eval/score",
    "greater_is_better": True,
    "ignore_data_skip": True,
    "restore_callback_states_from_checkpoint": True,
    "full_determinism": True,
    "data_seed": 3,
    "accelerator_config": {"split_batches": True},
    "parallelism_config": "x",
    "dataloader_drop_last": True,
    "dataloader_num_workers": 2,
    "dataloader_pin_memory": False,
    "dataloader_persistent_workers": True,
    "dataloader_prefetch_factor": 2,
    "dataloader_multiprocessing_context": "spawn",
    "dataloader_in_order": False,
    "label_names": ["labels"],
    "train_sampling_strategy": "sequential",
    "length_column_name": "size",
    "ddp_find_unused_parameters": True,
    "ddp_bucket_cap_mb": 25,
    "ddp_broadcast_buffers": True,
    "ddp_static_graph": True,
    "ddp_backend": "gloo",
    "ddp_timeout": 60,
    "fsdp": "full_shard",
    "fsdp_config": {"a": 1},
    "deepspeed": "ds.json",
    "debug": "underflow_overflow",
    "skip_memory_metrics": False,
}


def test_every_field_is_classified_once():
    honoured, accepted, refused = (
        config_fields.HONOURED,
        set(config_fields.NOT_READ_BY_TRAINER),
        set(config_fields.REFUSED),
    )
    assert not honoured & refused and not honoured & accepted and not accepted & refused
    unclassified = INHERITED - honoured - accepted - refused
    assert not unclassified, f"TrainingArguments fields with no decision: {sorted(unclassified)}"
    assert (honoured | accepted | refused) <= INHERITED
    assert set(config_fields.ALLOWED_VALUES) <= honoured
    # PPO's own fields (declared by PPOConfig and not by TrainingArguments) are all read by the package too.
    own = {config_field.name for config_field in dataclasses.fields(PPOConfig)} - INHERITED
    assert own and not own & refused


def package_source() -> str:
    return "\n".join(
        path.read_text() for path in PACKAGE.rglob("*.py") if path.name not in ("config.py", "config_fields.py")
    )


def test_every_honoured_and_own_field_is_read_by_the_package():
    source = package_source()
    own = {config_field.name for config_field in dataclasses.fields(PPOConfig)} - INHERITED
    unread = [name for name in sorted(config_fields.HONOURED | own) if not re.search(rf"\.{name}\b", source)]
    # Fields read only inside PPOConfig itself (derived batch sizes, choice checks) are used in config.py.
    config_source = (PACKAGE / "ppo" / "config.py").read_text()
    unread = [name for name in unread if not re.search(rf"self\.{name}\b", config_source)]
    # Read by Transformers' optimizer factory (tested below), or allowed only at the one value matching what PPO does.
    unread = set(unread) - READ_BY_OPTIMIZER_FACTORY - {"logging_strategy", "hub_strategy"}
    # hub_token is taken out of the arguments (scripts.common: blank_secret_fields) so no file ever holds it, and
    # given to the upload from there (tests/test_output_safety.py pushes with it).
    unread -= {"hub_token"}
    assert not unread, f"fields accepted but read nowhere: {sorted(unread)}"
    assert config_fields.ALLOWED_VALUES["logging_strategy"] == ("steps",)


READ_BY_OPTIMIZER_FACTORY = {"adam_beta1", "adam_beta2", "adam_epsilon", "optim_args"}


def test_adam_settings_and_optim_args_reach_the_optimizer(tmp_path, tiny_base_dir, tiny_reward_dir):
    from test_ppo_optim import wrapper

    from rlhf_trl.ppo.optim import build_optimizer_and_scheduler

    args = config(tmp_path, optim="adamw_torch", adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6)
    optimizer, _ = build_optimizer_and_scheduler(wrapper(tiny_base_dir, tiny_reward_dir), args, ppo_steps=1)
    assert optimizer.defaults["betas"] == (0.8, 0.95) and optimizer.defaults["eps"] == 1e-6
    args = config(tmp_path, optim="sgd", optim_args="momentum=0.9")
    optimizer, _ = build_optimizer_and_scheduler(wrapper(tiny_base_dir, tiny_reward_dir), args, ppo_steps=1)
    assert optimizer.defaults["momentum"] == 0.9


@pytest.mark.parametrize("name", sorted(config_fields.REFUSED))
def test_each_refused_field_set_to_a_non_default_value_stops_with_one_line(tmp_path, name):
    assert name in NON_DEFAULT, f"give {name} a non-default value in NON_DEFAULT"
    with pytest.raises(ValueError) as error:
        config(tmp_path, **{name: NON_DEFAULT[name]})
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{name}=") and "not supported by PPO" in message


def test_defaults_and_parser_spellings_of_defaults_are_accepted(tmp_path):
    config(tmp_path)
    config(tmp_path, include_num_input_tokens_seen=False, tf32=None, include_for_metrics=[])


@pytest.mark.parametrize(
    "name, value",
    [
        ("save_strategy", "epoch"),
        ("save_strategy", "best"),
        ("eval_strategy", "epoch"),
        ("logging_strategy", "epoch"),
        ("optim", "galore_adamw"),
        ("optim", "lomo"),
    ],
)
def test_strategies_and_optimizers_ppo_lacks_are_refused(tmp_path, name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be one of .* for PPO, got '{value}'$"):
        config(tmp_path, **{name: value})


def test_hub_strategy_other_than_end_is_refused_when_pushing(tmp_path):
    config(tmp_path, hub_strategy="checkpoint")  # not pushing: nothing to refuse
    config(tmp_path, push_to_hub=True, hub_model_id="user/model", hub_strategy="end")
    with pytest.raises(ValueError, match=r"^hub_strategy='every_save' is not supported by PPO .*hub_strategy: end$"):
        config(tmp_path, push_to_hub=True, hub_model_id="user/model")


def test_save_strategy_no_writes_no_checkpoint_and_steps_does(tmp_path, tiny_base_dir, tiny_reward_dir):
    from ppo_helpers import build

    for strategy, expected in (("no", []), ("steps", ["checkpoint-1"])):
        trainer = build(
            tmp_path / strategy, tiny_base_dir, tiny_reward_dir, max_steps=2, save_steps=1, save_strategy=strategy
        )
        trainer.train()
        assert sorted(path.name for path in (tmp_path / strategy / "ppo").glob("checkpoint-*")) == expected


def test_eval_strategy_steps_evaluates_and_no_does_not(tmp_path, tiny_base_dir, tiny_reward_dir):
    from ppo_helpers import build

    for strategy in ("no", "steps"):
        trainer = build(
            tmp_path / strategy, tiny_base_dir, tiny_reward_dir, max_steps=1, eval_steps=1, eval_strategy=strategy
        )
        metrics = trainer.train()
        assert ("eval/score" in metrics) == (strategy == "steps")
