"""Reward-model training on K-wise rankings, as InstructGPT did: all answers to one prompt in one batch element.

A ranking record is ``{"prompt", "responses": [answer, ...], "scores": [number, ...]}`` (higher score = better;
without ``scores`` the list order is best-first). Every pair (i, j) with score_i > score_j contributes
``-log sigmoid(r_i - r_j)``; the pair losses are averaged within a prompt, then over prompts, so a prompt with many
answers weighs as much as one with two while its answers are read only once (K forward passes for K(K-1)/2
comparisons). Pairwise records ``{"prompt", "chosen", "rejected"}`` are accepted as two-answer rankings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from datasets import Dataset
from trl import RewardConfig, RewardTrainer

from rlhf_trl.reward.sources import reward_input_ids

logger = logging.getLogger(__name__)


def ranking_loss(rewards: torch.Tensor, scores: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean over prompts of the mean pairwise loss within each prompt, plus pair statistics.

    rewards, scores: (N,) for N answers in the batch; group_ids: (N,) index of each answer's prompt (0..G-1).
    Returns the loss (scalar) and sums for metrics: correct pairs, pairs, summed margins, prompts whose top answer by
    reward is a top answer by score, prompts, and the summed rewards (and counts) of best- and worst-scored answers.
    """
    same_group = group_ids[:, None] == group_ids[None, :]  # (N, N)
    better = same_group & (scores[:, None] > scores[None, :])  # (N, N): answer i ranked above answer j
    differences = rewards[:, None] - rewards[None, :]  # (N, N): r_i - r_j
    pair_losses = -functional.logsigmoid(differences) * better
    group_count = int(group_ids.max().item()) + 1
    zeros = torch.zeros(group_count, dtype=rewards.dtype, device=rewards.device)
    pairs_per_group = zeros.index_add(0, group_ids, better.sum(dim=1).to(rewards.dtype))  # (G,)
    loss_per_group = zeros.index_add(0, group_ids, pair_losses.sum(dim=1))  # (G,)
    has_pairs = pairs_per_group > 0
    # A prompt whose answers all tie has no pairs; it adds nothing (the data layer already rejects such records).
    loss = (loss_per_group[has_pairs] / pairs_per_group[has_pairs]).mean() if has_pairs.any() else rewards.sum() * 0

    with torch.no_grad():
        detached, float_scores = rewards.detach().to(torch.float), scores.to(torch.float)

        def per_group(values: torch.Tensor, reduce: str) -> torch.Tensor:  # (N,) -> (G,)
            start = torch.full((group_count,), -torch.inf if reduce == "amax" else torch.inf, device=values.device)
            return start.scatter_reduce(0, group_ids, values, reduce=reduce)

        best_score, worst_score = per_group(float_scores, "amax"), per_group(float_scores, "amin")
        is_best, is_worst = float_scores == best_score[group_ids], float_scores == worst_score[group_ids]
        # The prompt's top answer by reward is one of its top answers by score.
        is_top_reward = detached == per_group(detached, "amax")[group_ids]
        top_hits = torch.zeros(group_count, device=rewards.device).index_add(
            0, group_ids, (is_top_reward & is_best).to(torch.float)
        )
        statistics = {
            "correct_pairs": ((differences > 0) & better).sum().to(torch.float),
            "pairs": better.sum().to(torch.float),
            "margin_sum": (differences * better).sum().to(torch.float),
            "top_hits": (top_hits > 0).sum().to(torch.float),
            "groups": torch.tensor(float(group_count), device=rewards.device),
            "best_reward_sum": (detached * is_best).sum(),
            "best_count": is_best.sum().to(torch.float),
            "worst_reward_sum": (detached * is_worst).sum(),
            "worst_count": is_worst.sum().to(torch.float),
        }
    return loss, statistics


@dataclass
class DataCollatorForRanking:
    """Flatten the answers of all prompts in a batch into one right-padded batch of sequences.

    Input examples hold ``response_ids`` (list of token lists, one per answer, prompt included) and ``scores``.
    Output: ``input_ids``/``attention_mask`` (N, L) for N answers, ``scores`` (N,) and ``group_ids`` (N,).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [ids for example in examples for ids in example["response_ids"]]
        length = max(len(ids) for ids in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        scores = [float(score) for example in examples for score in example["scores"]]
        group_ids = [group for group, example in enumerate(examples) for _ in example["response_ids"]]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "scores": torch.tensor(scores, dtype=torch.float),
            "group_ids": torch.tensor(group_ids, dtype=torch.long),
        }


def pairs_as_rankings(dataset: Dataset) -> Dataset:
    """``{"prompt", "chosen", "rejected"}`` records as two-answer rankings (chosen scored 1, rejected 0)."""
    return dataset.map(
        lambda example: {"responses": [example["chosen"], example["rejected"]], "scores": [1.0, 0.0]},
        remove_columns=["chosen", "rejected"],
    )


def expand_rankings_to_pairs(dataset: Dataset) -> Dataset:
    """Every strictly ordered pair of every ranking as an independent ``{"prompt", "chosen", "rejected"}`` record
    (the way pairwise trainers have to consume ranked data)."""
    records = []
    for example in dataset:
        responses, scores = (
            example["responses"],
            example.get("scores") or list(range(len(example["responses"]), 0, -1)),
        )
        for first in range(len(responses)):
            for second in range(len(responses)):
                if scores[first] > scores[second]:
                    records.append(
                        {"prompt": example["prompt"], "chosen": responses[first], "rejected": responses[second]}
                    )
    return Dataset.from_list(records)


class KWiseRewardTrainer(RewardTrainer):
    """``RewardTrainer`` whose batch elements are whole rankings; same constructor and ``RewardConfig``.

    ``per_device_train_batch_size`` counts prompts: a batch holds the sum of their answer counts as sequences.
    Logged metrics: ``accuracy`` over all ordered pairs, ``top1_accuracy`` (best answer gets the highest reward),
    ``margin``, ``min/mean/max_reward``, and the mean rewards of the best- and worst-scored answers
    (``best_answer_reward``, ``worst_answer_reward``: the ranking analogues of chosen and rejected rewards).
    ``max_length`` drops over-long answers from a ranking (counted in the log) and drops a ranking that has fewer
    than two differently scored answers left.
    """

    _tag_names = ["trl", "reward-trainer", "kwise"]

    def __init__(self, model, args: RewardConfig | None = None, data_collator=None, *positional, **keywords):
        super().__init__(model, args, data_collator, *positional, **keywords)
        if data_collator is None:
            # The parent built a pair collator; the pad token it settled on is on the processing class now.
            self.data_collator = DataCollatorForRanking(
                pad_token_id=self.processing_class.pad_token_id, pad_to_multiple_of=self.args.pad_to_multiple_of
            )

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not isinstance(dataset, Dataset):
            raise TypeError(f"{type(self).__name__} needs a map-style datasets.Dataset for {dataset_name}")
        column_names = dataset.column_names
        if "response_ids" in column_names:
            return dataset  # already tokenized
        if "responses" not in column_names:
            if not {"chosen", "rejected"} <= set(column_names):
                raise ValueError(
                    f"{dataset_name} dataset needs 'responses' (+ 'scores') or 'chosen'/'rejected' columns"
                )
            dataset = pairs_as_rankings(dataset)
        if "scores" not in dataset.column_names:
            dataset = dataset.map(
                lambda example: {
                    "scores": [
                        float(len(example["responses"]) - position) for position in range(len(example["responses"]))
                    ]
                }
            )

        def tokenize(example: dict) -> dict:
            # As the reward model is read everywhere else (PPO, evaluation): chat template or text + EOS.
            sequences = [
                reward_input_ids(processing_class, example["prompt"], answer) for answer in example["responses"]
            ]
            return {"response_ids": sequences}

        dataset = dataset.map(tokenize, num_proc=args.dataset_num_proc, desc=f"Tokenizing {dataset_name} rankings")
        if args.max_length is not None:
            dataset = self._drop_long_answers(dataset, args.max_length, dataset_name)
        return dataset

    @staticmethod
    def _drop_long_answers(dataset: Dataset, max_length: int, dataset_name: str) -> Dataset:
        dropped_answers = 0

        def shorten(example: dict) -> dict:
            nonlocal dropped_answers
            kept = [position for position, ids in enumerate(example["response_ids"]) if len(ids) <= max_length]
            dropped_answers += len(example["response_ids"]) - len(kept)
            return {
                "response_ids": [example["response_ids"][position] for position in kept],
                "scores": [example["scores"][position] for position in kept],
            }

        shortened = dataset.map(shorten, load_from_cache_file=False)
        kept = shortened.filter(lambda example: len(set(example["scores"])) >= 2)
        dropped_rankings = len(shortened) - len(kept)
        if dropped_answers or dropped_rankings:
            logger.warning(
                "%s: %d answers longer than max_length=%d dropped; %d rankings left with no pair dropped",
                dataset_name,
                dropped_answers,
                max_length,
                dropped_rankings,
            )
        return kept

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["response_ids", "scores"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        scores, group_ids = inputs.pop("scores"), inputs.pop("group_ids")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        rewards = outputs.logits.squeeze(-1)  # (N,)
        loss, statistics = ranking_loss(rewards, scores, group_ids)
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean(rewards**2)

        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            all_rewards = self.accelerator.gather_for_metrics(rewards.detach())
            self._metrics[mode]["min_reward"].append(all_rewards.min().item())
            self._metrics[mode]["mean_reward"].append(all_rewards.mean().item())
            self._metrics[mode]["max_reward"].append(all_rewards.max().item())
            totals = self.accelerator.gather_for_metrics(torch.stack(list(statistics.values()))[None]).sum(dim=0)
            summed = dict(zip(statistics, totals.tolist()))
            pairs = max(summed["pairs"], 1.0)
            self._metrics[mode]["accuracy"].append(summed["correct_pairs"] / pairs)
            self._metrics[mode]["margin"].append(summed["margin_sum"] / pairs)
            self._metrics[mode]["top1_accuracy"].append(summed["top_hits"] / max(summed["groups"], 1.0))
            self._metrics[mode]["pairs_per_prompt"].append(summed["pairs"] / max(summed["groups"], 1.0))
            self._metrics[mode]["best_answer_reward"].append(summed["best_reward_sum"] / max(summed["best_count"], 1))
            self._metrics[mode]["worst_answer_reward"].append(
                summed["worst_reward_sum"] / max(summed["worst_count"], 1)
            )
        return (loss, outputs) if return_outputs else loss
