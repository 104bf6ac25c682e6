"""The embedded "tiny-sort" dataset: the synthetic sorting task of ``rlhf_trl.tiny.task`` for all three steps.

Every step draws from its own seeded split of the task, so ``data_split`` does not apply; the evaluation data of
every step comes from the same held-out eval prompts.
"""

from __future__ import annotations

import random

from ..tiny import task

NAME = "tiny-sort"
# Records per step (1: SFT demonstrations, 2: preference pairs, 3: PPO prompts); tune to make runs shorter/longer.
TINY_SIZES = {1: 4000, 2: 6000, 3: 2048}
EVAL_PROMPTS = task.EVAL_PROMPTS  # held-out prompts of every step
# Flaws given to the rejected answers of the eval pairs, in turn; "drop" and "ramble" always change the answer.
_EVAL_FLAWS = ("copy", "ramble", "drop", "swap")


def _correct_completion(prompt: str) -> str:
    return " " + " ".join(task.target_answer(prompt))


def _eval_pair(prompt: str, position: int, rng: random.Random) -> dict:
    numbers = task.target_answer(prompt)
    chosen = _correct_completion(prompt)
    rejected = " " + " ".join(task._flawed_answer(numbers, _EVAL_FLAWS[position % len(_EVAL_FLAWS)], rng))
    if rejected == chosen:  # copying or swapping an all-equal list changes nothing
        rejected = " " + " ".join(task._flawed_answer(numbers, "drop", rng))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def eval_records(step: int) -> list[dict]:
    """Held-out eval data of ``step``: demonstrations, correct-vs-flawed pairs or bare prompts."""
    prompts = [record["prompt"] for record in task.make_records("eval", EVAL_PROMPTS)]
    if step == 1:
        return [{"prompt": prompt, "completion": _correct_completion(prompt)} for prompt in prompts]
    if step == 2:
        rng = random.Random(task.SPLIT_SEEDS["eval"])
        return [_eval_pair(prompt, position, rng) for position, prompt in enumerate(prompts)]
    if step == 3:
        return [{"prompt": prompt} for prompt in prompts]
    raise ValueError(f"step must be 1, 2 or 3, got {step}")


def train_records(step: int) -> list[dict]:
    """Training data of ``step``: ``TINY_SIZES[step]`` records of the task's split for that step."""
    split = {1: "sft", 2: "reward", 3: "ppo"}.get(step)
    if split is None:
        raise ValueError(f"step must be 1, 2 or 3, got {step}")
    return task.make_records(split, TINY_SIZES[step])
