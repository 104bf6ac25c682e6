"""Pick the accelerate config for a deployment and build the ``accelerate launch`` command for one step.

Deployment types follow DeepSpeed-Chat's: ``single_gpu``, ``single_node`` (all GPUs of one machine), ``multi_node``
(DeepSpeed's launcher over a hostfile), plus ``cpu`` for machines without a GPU. Each step may use its own ZeRO stage
(``None`` or 0: no DeepSpeed).
"""

from __future__ import annotations

import sys
from pathlib import Path

from rlhf_trl.resources import accelerate_config

DEPLOYMENT_TYPES = ("cpu", "single_gpu", "single_node", "multi_node")
# ZeRO stages a step may ask for (0: no DeepSpeed); which of them a deployment offers is in _CONFIG_NAMES.
ZERO_STAGES = (0, 1, 2, 3)

# (deployment type, ZeRO stage) -> config file name. Stage None/0 means no DeepSpeed, except on multi-node, which
# always runs DeepSpeed's launcher (stage 0 there) and takes the stage on the launch command line.
_CONFIG_NAMES = {
    ("cpu", None): "cpu.yaml",  # names of files shipped in rlhf_trl/accelerate_configs
    ("cpu", 2): "zero2_cpu.yaml",
    ("cpu", 3): "zero3_cpu.yaml",
    ("single_gpu", None): "single_gpu.yaml",
    ("single_gpu", 1): "zero1.yaml",
    ("single_gpu", 2): "zero2.yaml",
    ("single_gpu", 3): "zero3.yaml",
    ("single_node", None): "ddp.yaml",
    ("single_node", 1): "zero1.yaml",
    ("single_node", 2): "zero2.yaml",
    ("single_node", 3): "zero3.yaml",
    ("multi_node", None): "multi_node.yaml",
    ("multi_node", 1): "multi_node.yaml",
    ("multi_node", 2): "multi_node.yaml",
    ("multi_node", 3): "multi_node.yaml",
}


def config_for_deployment(deployment_type: str, zero_stage: int | None) -> Path:
    """Path of the shipped accelerate config for ``deployment_type`` and a step's ZeRO stage (None or 0: no DeepSpeed).

    ``multi_node`` has one config for every stage: pass the stage to ``launch_command``, which overrides it.
    Raises ValueError for an unknown deployment type or a stage that deployment does not offer.
    """
    if deployment_type not in DEPLOYMENT_TYPES:
        raise ValueError(f"Unknown deployment type {deployment_type!r}; choose one of: {', '.join(DEPLOYMENT_TYPES)}.")
    stage = None if zero_stage == 0 else zero_stage
    name = _CONFIG_NAMES.get((deployment_type, stage))
    if name is None:
        offered = sorted(str(s) for (kind, s) in _CONFIG_NAMES if kind == deployment_type and s is not None)
        raise ValueError(
            f"ZeRO stage {zero_stage} is not offered for deployment type {deployment_type!r}; use none/0 or one of "
            f"{', '.join(offered)} (ZeRO-1 brings nothing on one CPU process, so cpu offers 2 and 3)."
        )
    return accelerate_config(name)


def default_num_processes(deployment_type: str) -> int | None:
    """Processes to start on this machine: 1 for cpu and single_gpu, every visible GPU for single_node, and None for
    multi_node (the config and hostfile say how many)."""
    if deployment_type in ("cpu", "single_gpu"):
        return 1
    if deployment_type == "single_node":
        import torch

        return max(torch.cuda.device_count(), 1)
    if deployment_type == "multi_node":
        return None
    raise ValueError(f"Unknown deployment type {deployment_type!r}; choose one of: {', '.join(DEPLOYMENT_TYPES)}.")


def launch_command(
    config_path: str | Path,
    script_module: str,
    script_args: list[str],
    num_processes: int | None = None,
    zero_stage: int | None = None,
) -> list[str]:
    """``accelerate launch`` running ``python -m script_module *script_args`` under the config at ``config_path``.

    ``num_processes`` overrides the config's process count; ``zero_stage`` overrides the ZeRO stage of a DeepSpeed
    config (used for multi_node, whose single config serves every stage). The launcher is started with this
    interpreter, so the command works inside a virtual environment that is not activated.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path)]
    if num_processes is not None:
        command += ["--num_processes", str(num_processes)]
    if zero_stage is not None:
        command += ["--zero_stage", str(zero_stage)]
    return [*command, "-m", script_module, *script_args]


def launch_command_for_deployment(
    deployment_type: str, zero_stage: int | None, script_module: str, script_args: list[str]
) -> list[str]:
    """The launch command for one pipeline step: config, process count and (multi-node) ZeRO stage all derived from
    the deployment type and the step's stage."""
    config_path = config_for_deployment(deployment_type, zero_stage)
    stage_override = (zero_stage or 0) if deployment_type == "multi_node" else None
    return launch_command(
        config_path, script_module, script_args, default_num_processes(deployment_type), zero_stage=stage_override
    )
