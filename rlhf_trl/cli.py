"""The ``rlhf-trl`` command: one sub-command per job, each a thin front to a module's ``main``."""

from __future__ import annotations

import importlib
import sys

from rlhf_trl.steps import STEP_NAMES

COMMANDS = {
    "sft": ("rlhf_trl.scripts.sft", "cli", "step 1: supervised fine-tuning (TRL SFTTrainer)"),
    "reward": ("rlhf_trl.scripts.reward", "cli", "step 2: reward model (TRL RewardTrainer / K-wise)"),
    "ppo": ("rlhf_trl.scripts.ppo", "cli", "step 3: PPO"),
    "e2e": ("rlhf_trl.scripts.e2e", "main", "all three steps through accelerate launch, with a summary"),
    "chat": ("rlhf_trl.inference.chat", "main", "multi-turn chat with a trained model in the terminal"),
    "eval": ("rlhf_trl.inference.evaluate", "main", "evaluate a step's model (sft | reward | ppo)"),
    "report": ("rlhf_trl.reporting.report", "main", "one HTML page summarising a run directory"),
    "push": ("rlhf_trl.reporting.hub", "main", "push an output directory to the Hugging Face Hub"),
    "bench": ("rlhf_trl.bench.step3", "main", "step-3 throughput benchmark (DS-Chat setting)"),
    "serve-reward": ("rlhf_trl.reward.server", "main", "serve a reward model or function over HTTP (remote reward)"),
    "recipes": ("rlhf_trl.resources", "main", "list the shipped recipes and accelerate configs"),
}
# Commands whose terminal output is for reading: no per-model "Loading weights" bars between their lines.
QUIET_LOADING = ("e2e", "chat", "eval")
# Steps that can be started under ``accelerate launch`` with ``--accelerate_config NAME|PATH``.
LAUNCHABLE = STEP_NAMES


def usage() -> str:
    lines = ["usage: rlhf-trl <command> [options]   (rlhf-trl <command> --help for each)", "", "commands:"]
    lines += [f"  {name:<8} {description}" for name, (_, _, description) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[command]
    if command in LAUNCHABLE:
        from rlhf_trl.resources import ResourceNotFound

        try:
            rest = with_shipped_recipe(rest)
            accelerate_config, rest = take_option(rest, "--accelerate_config", "--accelerate-config")
            if accelerate_config is not None:
                return launch_step(module_name, accelerate_config, rest)
        except ResourceNotFound as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if command in QUIET_LOADING:
        quiet_weight_loading()
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(rest) or 0)


def quiet_weight_loading() -> None:
    """Hide Transformers' "Loading weights" progress bar (one per model loaded) and keep every other bar, such as
    the download bars of a model fetched from the Hub."""
    from transformers.utils import logging as transformers_logging

    def hook(factory, args, kwargs):
        if kwargs.get("desc") == "Loading weights":
            kwargs = {**kwargs, "disable": True}
        return factory(*args, **kwargs)

    transformers_logging.set_tqdm_hook(hook)


def take_option(argv: list[str], *names: str) -> tuple[str | None, list[str]]:
    """Remove ``NAME VALUE`` or ``NAME=VALUE`` (any of ``names``) from argv; return the value and the rest."""
    value, rest, index = None, [], 0
    while index < len(argv):
        argument = argv[index]
        flag, equals, inline = argument.partition("=")
        if flag in names:
            if equals:
                value = inline
            elif index + 1 < len(argv):
                value, index = argv[index + 1], index + 1
            else:
                raise SystemExit(f"error: {flag} needs a value (a shipped config name or a file)")
        else:
            rest.append(argument)
        index += 1
    return value, rest


def with_shipped_recipe(argv: list[str]) -> list[str]:
    """``--config tiny/sft.yaml`` means the shipped recipe file when no such file exists where the command runs."""
    from rlhf_trl.resources import recipe_file

    config, rest = take_option(argv, "--config")
    return rest if config is None else ["--config", str(recipe_file(config)), *rest]


def launch_step(module_name: str, accelerate_config: str, argv: list[str]) -> int:
    """Run a step in new processes under ``accelerate launch`` with a shipped (by name) or user (by path) config."""
    import subprocess

    from rlhf_trl.launch import launch_command
    from rlhf_trl.resources import accelerate_config as resolve_config

    command = launch_command(resolve_config(accelerate_config), module_name, argv)
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
