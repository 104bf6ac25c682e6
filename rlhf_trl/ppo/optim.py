"""One optimizer for actor and critic with separate learning rates and schedules (parameter groups), so a single
Accelerate/DeepSpeed engine trains both. The optimizer is the one ``optim`` names, as in Transformers' Trainer, and
biases and norm weights get no weight decay."""

from __future__ import annotations

import math

import torch
from transformers import Trainer


def schedule_factor(name: str, warmup_steps: int, total_steps: int):
    """A multiplier of the base learning rate for each optimizer step: linear warmup, then the named shape."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if name in ("constant", "constant_with_warmup"):
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(progress, 1.0)
        if name == "linear":
            return max(0.0, 1.0 - progress)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"unsupported lr schedule {name!r}: use linear, cosine, constant or constant_with_warmup")

    return factor


def optimizer_steps(args, ppo_steps: int) -> int:
    """Optimizer steps over the run: mini-batches per rollout x PPO epochs x PPO steps."""
    return ppo_steps * args.num_mini_batches * args.num_ppo_epochs


def decay_parameter_names(module: torch.nn.Module) -> set[str]:
    """Names of the parameters that get weight decay: all but biases and norm weights, decided exactly as by
    Transformers' Trainer (its method reads nothing from the trainer instance, so it is called unbound)."""
    return set(Trainer.get_decay_parameter_names(None, module))


def parameter_groups(wrapper, args) -> list[dict]:
    """Up to four groups, actor groups first: (actor, critic) x (with, without weight decay), each with its own
    learning rate. Empty groups are left out; without a critic (wrapper.critic None) only the actor's exist."""
    groups = []
    roles = [("actor", wrapper.policy, args.learning_rate)]
    if wrapper.critic is not None:
        roles.append(("critic", wrapper.critic, args.critic_learning_rate))
    for role, module, learning_rate in roles:
        trainable = [(name, parameter) for name, parameter in module.named_parameters() if parameter.requires_grad]
        if not trainable:
            raise ValueError(f"the {role} has no trainable parameters")
        decayed = decay_parameter_names(module)
        for suffix, weight_decay, with_decay in (("", args.weight_decay, True), ("_no_decay", 0.0, False)):
            params = [parameter for name, parameter in trainable if (name in decayed) == with_decay]
            if params:
                groups.append(
                    {"params": params, "lr": learning_rate, "weight_decay": weight_decay, "name": role + suffix}
                )
    return groups


def build_optimizer_and_scheduler(wrapper, args, ppo_steps: int):
    """The optimizer named by ``args.optim`` (chosen by Transformers' own factory, with its optim_args) over the
    actor and critic groups, and a LambdaLR holding the actor's or the critic's schedule for each group."""
    groups = parameter_groups(wrapper, args)
    optimizer_class, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    optimizer_kwargs.pop("lr", None)  # each group carries its own learning rate
    optimizer = optimizer_class(groups, **optimizer_kwargs)
    total = optimizer_steps(args, ppo_steps)
    warmup = args.get_warmup_steps(total)
    actor_schedule = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    critic_schedule = args.critic_lr_scheduler_type or actor_schedule
    factors = {
        "actor": schedule_factor(actor_schedule, warmup, total),
        "critic": schedule_factor(critic_schedule, warmup, total),
    }
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [factors[group["name"].split("_")[0]] for group in optimizer.param_groups]
    )
    return optimizer, scheduler
