"""Two ranks, one of which alone sees trouble: launched by tests/test_guards.py under torchrun (gloo, CPU).

Scenarios, each on a fresh PPO trainer: ``reward`` (rank 1's reward function returns NaN), ``loss`` (rank 1's value
loss is NaN) and ``skip`` (rank 1 alone flags a ratio blow-up). Each rank writes ``<report>.<rank>.json`` with what
it raised or how many micro-batches it skipped. A rank that decided alone would leave the other waiting in a
collective, and the test's timeout would fire.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch
from datasets import Dataset
from ppo_helpers import config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf_trl.guards import TrainingStoppedError, agree_any
from rlhf_trl.ppo import losses
from rlhf_trl.ppo.trainer import PPOTrainer
from rlhf_trl.tiny.task import gold_scores, make_records

RANK = int(os.environ.get("RANK", "0"))


def nan_on_rank_one(prompts, completions, **columns):
    scores = gold_scores(prompts, completions)
    if RANK == 1:
        scores[0] = math.nan
    return scores


def build(args, scenario: str, reward_function) -> PPOTrainer:
    return PPOTrainer(
        args=config(Path(args.output) / scenario, max_steps=1, max_consecutive_skips=100),
        processing_class=AutoTokenizer.from_pretrained(args.actor),
        model=AutoModelForCausalLM.from_pretrained(args.actor),
        value_model=AutoModelForSequenceClassification.from_pretrained(args.critic, num_labels=1),
        reward_funcs=[reward_function],
        train_dataset=Dataset.from_list(make_records("ppo", 32)),
    )


def outcome(trainer: PPOTrainer) -> dict:
    try:
        metrics = trainer.train()
    except TrainingStoppedError as error:
        return {"error": type(error).__name__, "message": str(error)}
    return {"error": None, "skipped": metrics.get("policy/skipped_micro_batches")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("--report", "--actor", "--critic", "--output"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    report = {}

    report["reward"] = outcome(build(args, "reward", nan_on_rank_one))
    report["agree"] = agree_any([RANK == 1, False])

    trainer = build(args, "loss", gold_scores)
    clean_value_loss = losses.value_loss

    def nan_value_loss(*arguments, **keywords):
        loss, stats = clean_value_loss(*arguments, **keywords)
        return loss * math.nan, stats

    if RANK == 1:
        losses.value_loss = nan_value_loss
    report["loss"] = outcome(trainer)
    losses.value_loss = clean_value_loss

    trainer = build(args, "skip", gold_scores)
    if RANK == 1:
        clean_micro_batch_loss = trainer._micro_batch_loss

        def always_blown_up(*a, **k):
            stats, loss, problem, _ = clean_micro_batch_loss(*a, **k)
            return stats, loss, problem, True

        trainer._micro_batch_loss = always_blown_up
    report["skip"] = outcome(trainer)
    report["skip"]["weights"] = float(sum(p.detach().double().sum() for p in trainer.policy.parameters()))

    Path(f"{args.report}.{RANK}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
