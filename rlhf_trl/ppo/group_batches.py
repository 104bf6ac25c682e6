"""Batch sizes of a group-sampling rollout (num_generations completions per prompt, as GRPO and RLOO sample),
derived once with checks that say what to change."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_trl.ppo.estimators import ESTIMATORS_NEEDING_GROUPS, check_advantage_estimator


@dataclass(frozen=True)
class GroupBatchSizes:
    """Batch sizes of a group-sampling rollout, derived once. "Completions" count rows; "prompts" count groups."""

    per_device_prompt_batch_size: int  # prompts each process generates for per rollout
    num_generations: int  # completions per prompt: G
    num_processes: int
    num_mini_batches: int
    per_device_rollout_batch_size: int  # completions per process per rollout = prompts x G
    global_prompt_batch_size: int  # prompts per rollout, all processes
    global_rollout_batch_size: int  # completions per rollout, all processes
    per_device_mini_batch_size: int  # completions per process per mini-batch, whole groups
    prompts_per_mini_batch: int  # groups per process per mini-batch


def _divisors(number: int) -> list[int]:
    return [candidate for candidate in range(1, number + 1) if number % candidate == 0]


def group_batch_sizes(
    per_device_prompt_batch_size: int,
    num_generations: int,
    num_processes: int = 1,
    num_mini_batches: int = 1,
    estimator: str | None = None,
) -> GroupBatchSizes:
    """Derive the batch sizes of a rollout where each process samples ``num_generations`` completions for each of its
    ``per_device_prompt_batch_size`` prompts, and split it into ``num_mini_batches`` mini-batches per process.

    Each process generates the whole group of each of its prompts, so a group never spans two processes; a
    mini-batch must then hold whole groups, which needs per_device_prompt_batch_size to be a multiple of
    num_mini_batches. Raises a ValueError saying what to change otherwise, or when ``estimator`` (if given) compares
    completions within groups and num_generations < 2.
    """
    for name, value in (
        ("per_device_prompt_batch_size", per_device_prompt_batch_size),
        ("num_generations", num_generations),
        ("num_processes", num_processes),
        ("num_mini_batches", num_mini_batches),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if estimator is not None:
        check_advantage_estimator(estimator)
        if estimator in ESTIMATORS_NEEDING_GROUPS and num_generations < 2:
            raise ValueError(
                f"The {estimator} advantage estimator compares the completions of one prompt: set num_generations to "
                f"2 or more (got {num_generations}), or use gae or reinforce_pp."
            )
    if per_device_prompt_batch_size % num_mini_batches:
        next_multiple = -(-per_device_prompt_batch_size // num_mini_batches) * num_mini_batches
        choices = ", ".join(str(divisor) for divisor in _divisors(per_device_prompt_batch_size))
        raise ValueError(
            f"per_device_prompt_batch_size = {per_device_prompt_batch_size} prompts do not split into "
            f"num_mini_batches = {num_mini_batches} mini-batches of whole groups (num_generations = {num_generations} "
            f"completions per prompt would be cut apart): set num_mini_batches to one of {choices}, or "
            f"per_device_prompt_batch_size to a multiple of {num_mini_batches} (e.g. {next_multiple})."
        )
    per_device_rollout = per_device_prompt_batch_size * num_generations
    prompts_per_mini_batch = per_device_prompt_batch_size // num_mini_batches
    return GroupBatchSizes(
        per_device_prompt_batch_size=per_device_prompt_batch_size,
        num_generations=num_generations,
        num_processes=num_processes,
        num_mini_batches=num_mini_batches,
        per_device_rollout_batch_size=per_device_rollout,
        global_prompt_batch_size=per_device_prompt_batch_size * num_processes,
        global_rollout_batch_size=per_device_rollout * num_processes,
        per_device_mini_batch_size=prompts_per_mini_batch * num_generations,
        prompts_per_mini_batch=prompts_per_mini_batch,
    )
