"""One optimizer for actor and critic with separate learning rates and schedules (two parameter groups), so a
single Accelerate/DeepSpeed engine trains both."""

from __future__ import annotations

import math

import torch


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


def build_optimizer_and_scheduler(wrapper, args, ppo_steps: int):
    """AdamW over two groups (actor, critic) and a LambdaLR holding one schedule per group."""
    actor = [p for p in wrapper.policy.parameters() if p.requires_grad]
    critic = [p for p in wrapper.critic.parameters() if p.requires_grad]
    if not actor:
        raise ValueError("the actor has no trainable parameters")
    if not critic:
        raise ValueError("the critic has no trainable parameters")
    optimizer = torch.optim.AdamW(
        [
            {"params": actor, "lr": args.learning_rate, "name": "actor"},
            {"params": critic, "lr": args.critic_learning_rate, "name": "critic"},
        ],
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
    )
    total = optimizer_steps(args, ppo_steps)
    warmup = args.get_warmup_steps(total)
    actor_schedule = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    critic_schedule = args.critic_lr_scheduler_type or actor_schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [schedule_factor(actor_schedule, warmup, total), schedule_factor(critic_schedule, warmup, total)],
    )
    return optimizer, scheduler
