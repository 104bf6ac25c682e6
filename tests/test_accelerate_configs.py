"""Accelerate configs: every YAML is a valid accelerate config, the CPU ones really train through ``accelerate
launch``, two torchrun ranks train data-parallel on CPU, and the launch helper picks the right file and command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DeepSpeedPlugin, DistributedType

from rlhf_trl.launch import (
    DEPLOYMENT_TYPES,
    config_for_deployment,
    default_num_processes,
    launch_command,
    launch_command_for_deployment,
)
from rlhf_trl.resources import ACCELERATE_CONFIGS_DIR as CONFIG_DIR
from rlhf_trl.resources import ResourceNotFound, accelerate_config

REPO = Path(__file__).resolve().parent.parent
SMOKE_DIR = REPO / "tests" / "scripts"
EXPECTED = {
    # file: (distributed type, ZeRO stage or None, runs on CPU)
    "cpu.yaml": (DistributedType.NO, None, True),
    "single_gpu.yaml": (DistributedType.NO, None, False),
    "ddp.yaml": (DistributedType.MULTI_GPU, None, False),
    "zero1.yaml": (DistributedType.DEEPSPEED, 1, False),
    "zero2.yaml": (DistributedType.DEEPSPEED, 2, False),
    "zero3.yaml": (DistributedType.DEEPSPEED, 3, False),
    "zero3_offload.yaml": (DistributedType.DEEPSPEED, 3, False),
    "multi_node.yaml": (DistributedType.DEEPSPEED, 2, False),
    "zero2_cpu.yaml": (DistributedType.DEEPSPEED, 2, True),
    "zero3_cpu.yaml": (DistributedType.DEEPSPEED, 3, True),
}
# Keys of an accelerate deepspeed_config section that configure the launcher rather than the DeepSpeedPlugin.
LAUNCHER_KEYS = {"deepspeed_multinode_launcher", "deepspeed_hostfile", "deepspeed_inclusion_filter"}


def test_every_config_file_is_covered():
    assert sorted(path.name for path in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


def test_configs_ship_in_the_package_and_the_repository_shows_them():
    assert CONFIG_DIR.parent.name == "rlhf_trl", "inside the package, so a wheel has them"
    top_level = REPO / "accelerate_configs"
    assert top_level.is_symlink() and top_level.resolve() == CONFIG_DIR.resolve()


def test_configs_are_found_by_name_or_path(tmp_path):
    assert accelerate_config("zero2") == accelerate_config("zero2.yaml") == CONFIG_DIR / "zero2.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("compute_environment: LOCAL_MACHINE\n")
    assert accelerate_config(str(own)) == own
    with pytest.raises(ResourceNotFound) as error:
        accelerate_config("zero4")
    message = str(error.value)
    assert "\n" not in message and "'zero4'" in message
    assert all(name in message for name in ("cpu", "zero2", "zero3_offload", "multi_node"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerates_own_classes(name):
    distributed_type, zero_stage, on_cpu = EXPECTED[name]
    config = load_config_from_file(str(CONFIG_DIR / name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == distributed_type
    assert config.use_cpu == on_cpu
    if on_cpu:
        assert config.num_processes == 1, "accelerate 1.15 cannot start several CPU processes from a config"
    if distributed_type == DistributedType.DEEPSPEED:
        plugin_options = {k: v for k, v in config.deepspeed_config.items() if k not in LAUNCHER_KEYS}
        plugin = DeepSpeedPlugin(**plugin_options)
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == zero_stage
        # Filled from TrainingArguments / the prepared dataloader when the run starts.
        assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"
        assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
    else:
        assert config.deepspeed_config == {}


def test_offload_and_multi_node_settings():
    offload = load_config_from_file(str(CONFIG_DIR / "zero3_offload.yaml")).deepspeed_config
    assert offload["offload_optimizer_device"] == offload["offload_param_device"] == "cpu"
    multi_node = load_config_from_file(str(CONFIG_DIR / "multi_node.yaml"))
    assert multi_node.num_machines == 2 and multi_node.num_processes == 16
    assert multi_node.deepspeed_config["deepspeed_multinode_launcher"] == "pdsh"
    assert multi_node.deepspeed_config["deepspeed_hostfile"] == "accelerate_configs/hostfile"
    hosts = [line for line in (CONFIG_DIR / "hostfile.example").read_text().splitlines() if not line.startswith("#")]
    assert [line.split()[1] for line in hosts] == ["slots=8", "slots=8"]


def test_config_for_deployment():
    assert config_for_deployment("cpu", None).name == "cpu.yaml"
    assert config_for_deployment("cpu", 0).name == "cpu.yaml"
    assert config_for_deployment("cpu", 2).name == "zero2_cpu.yaml"
    assert config_for_deployment("cpu", 3).name == "zero3_cpu.yaml"
    assert config_for_deployment("single_gpu", None).name == "single_gpu.yaml"
    assert config_for_deployment("single_gpu", 3).name == "zero3.yaml"
    assert config_for_deployment("single_node", None).name == "ddp.yaml"
    assert config_for_deployment("single_node", 1).name == "zero1.yaml"
    assert config_for_deployment("multi_node", 3).name == "multi_node.yaml"
    for deployment in DEPLOYMENT_TYPES:
        assert config_for_deployment(deployment, None).exists()
    with pytest.raises(ValueError, match="cpu, single_gpu, single_node, multi_node"):
        config_for_deployment("tpu", None)
    with pytest.raises(ValueError, match="not offered.*2, 3"):
        config_for_deployment("cpu", 1)


def test_launch_command_shapes():
    command = launch_command("c.yaml", "rlhf_trl.scripts.ppo", ["--recipe", "tiny"], num_processes=2)
    assert command == [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "c.yaml", "--num_processes", "2",
        "-m", "rlhf_trl.scripts.ppo", "--recipe", "tiny",
    ]  # fmt: skip
    multi = launch_command_for_deployment("multi_node", 3, "rlhf_trl.scripts.ppo", [])
    assert multi[multi.index("--zero_stage") + 1] == "3"
    assert "--num_processes" not in multi  # the config and hostfile decide
    single = launch_command_for_deployment("single_gpu", 2, "m", ["--x"])
    assert single[single.index("--config_file") + 1].endswith("zero2.yaml")
    assert single[single.index("--num_processes") + 1] == "1" and "--zero_stage" not in single
    assert default_num_processes("cpu") == 1 and default_num_processes("multi_node") is None


def run_smoke(command: list[str], report: Path, extra_env: dict | None = None, timeout: int = 300) -> list[dict]:
    """Run a launch command of the smoke module and return the per-process reports."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SMOKE_DIR), os.environ.get("PYTHONPATH", "")])}
    env.update(extra_env or {})
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads(path.read_text()) for path in sorted(report.parent.glob(report.name + ".*.json"))]
    for process_report in reports:
        assert process_report["losses"][-1] < process_report["losses"][0]
    return reports


def smoke_through_accelerate(config_name: str, tmp_path: Path) -> dict:
    report = tmp_path / "report"
    command = launch_command(CONFIG_DIR / config_name, "accelerate_smoke", ["--report", str(report), "--steps", "4"])
    (single,) = run_smoke(command, report)
    return single


def test_cpu_config_trains_through_accelerate_launch(tmp_path):
    report = smoke_through_accelerate("cpu.yaml", tmp_path)
    assert report["distributed_type"] == "DistributedType.NO" and report["device"] == "cpu"


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["zero2_cpu.yaml", "zero3_cpu.yaml"])
def test_deepspeed_cpu_configs_train_through_accelerate_launch(config_name, tmp_path):
    report = smoke_through_accelerate(config_name, tmp_path)
    assert report["distributed_type"] == "DistributedType.DEEPSPEED"
    assert report["model_class"] == "DeepSpeedEngine" and report["device"] == "cpu"


@pytest.mark.slow
def test_two_torchrun_ranks_train_data_parallel_on_cpu(tmp_path):
    report = tmp_path / "report"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(SMOKE_DIR / "accelerate_smoke.py"), "--report", str(report), "--steps", "4", "--batch-size", "4",
    ]  # fmt: skip
    reports = run_smoke(command, report, extra_env={"ACCELERATE_USE_CPU": "true"})
    assert [r["process_index"] for r in reports] == [0, 1]
    assert all(r["num_processes"] == 2 and r["distributed_type"] == "DistributedType.MULTI_CPU" for r in reports)
    assert reports[0]["first_batch_texts"] != reports[1]["first_batch_texts"], "ranks must see different data"
    assert reports[0]["weights_checksum"] == pytest.approx(reports[1]["weights_checksum"], rel=1e-9)
