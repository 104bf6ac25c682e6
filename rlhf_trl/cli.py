"""The ``rlhf-trl`` command: one sub-command per job, each a thin front to a module's ``main``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "sft": ("rlhf_trl.scripts.sft", "cli", "step 1: supervised fine-tuning (TRL SFTTrainer)"),
    "reward": ("rlhf_trl.scripts.reward", "cli", "step 2: reward model (TRL RewardTrainer / K-wise)"),
    "ppo": ("rlhf_trl.scripts.ppo", "cli", "step 3: PPO"),
    "e2e": ("rlhf_trl.scripts.e2e", "main", "all three steps through accelerate launch, with a summary"),
    "chat": ("rlhf_trl.chat", "main", "multi-turn chat with a trained model in the terminal"),
    "eval": ("rlhf_trl.evaluate", "main", "evaluate a step's model (sft | reward | ppo)"),
    "report": ("rlhf_trl.report", "main", "one HTML page summarising a run directory"),
    "push": ("rlhf_trl.hub", "main", "push an output directory to the Hugging Face Hub"),
    "bench": ("rlhf_trl.bench", "main", "step-3 throughput benchmark (DS-Chat setting)"),
    "serve-reward": ("rlhf_trl.reward.server", "main", "serve a reward model or function over HTTP (remote reward)"),
}


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
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
