"""Evaluator: what a PPO run measures. Statistics of each step's rollout gathered over processes, and greedy answers
on held-out prompts scored by the reward (and the gold scorer where one exists)."""

from __future__ import annotations

import copy

import torch

from rlhf_trl.generation import as_completions, completion_mask, completion_texts, has_eos
from rlhf_trl.ppo.experience import PromptSet, Rollout, micro_batches
from rlhf_trl.ppo.masks import fill_padding, masked_mean
from rlhf_trl.ppo.rollout import HFRollout
from rlhf_trl.ppo.scoring import CompletionScorer


class Evaluator:
    """Rollout metrics and greedy evaluation.

    Args:
        accelerator: the trainer's Accelerator (means are taken over all its processes).
        model: the prepared policy-and-value model (evaluation generates with its policy).
        tokenizer: the actor's tokenizer.
        generation_config: the rollout's sampling config; evaluation makes it greedy.
        scorer: the run's CompletionScorer.
        prompts: held-out prompts (None: no greedy evaluation).
        limit: evaluate on at most this many prompts.
        batch_size: prompts per generation batch.
    """

    def __init__(
        self,
        accelerator,
        model,
        tokenizer,
        generation_config,
        scorer: CompletionScorer,
        prompts: PromptSet | None,
        limit: int,
        batch_size: int,
    ):
        self.accelerator = accelerator
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.scorer = scorer
        self.prompts = prompts
        self.limit = limit
        self.batch_size = max(batch_size, 1)

    def gathered_mean(self, tensor: torch.Tensor) -> float:
        return self.accelerator.gather(tensor.float().reshape(-1).to(self.accelerator.device)).mean().item()

    def gathered_nanmean(self, tensor: torch.Tensor) -> float:
        """Mean over processes leaving out NaN (scores of samples dropped for an invalid gold score)."""
        return self.accelerator.gather(tensor.float().reshape(-1).to(self.accelerator.device)).nanmean().item()

    def rollout_metrics(self, rollout: Rollout, kl_coef: float, episodes: int) -> dict[str, float]:
        """Scores, KL, values, answer lengths of a scored rollout with advantages, averaged over every process."""
        mask = rollout.completion_mask.float()
        kl_per_answer = fill_padding(rollout.kl, mask).sum(dim=1)
        non_score = -kl_coef * kl_per_answer
        ended = has_eos(rollout.completion_ids, self.tokenizer.eos_token_id).float()
        metrics = {
            "objective/score": self.gathered_mean(rollout.raw_scores),
            "objective/shaped_score": self.gathered_mean(rollout.scores),
            "objective/kl": self.gathered_mean(kl_per_answer),
            "objective/non_score_reward": self.gathered_mean(non_score),
            "objective/rlhf_reward": self.gathered_mean(rollout.scores + non_score),
            "objective/advantage_mean": self.gathered_mean(masked_mean(rollout.advantages, mask)),
            "response/length": self.gathered_mean(mask.sum(dim=1)),
            "response/no_eos_fraction": 1.0 - self.gathered_mean(ended),
            "episodes": float(episodes),
        }
        if rollout.values is not None:
            metrics["value/mean"] = self.gathered_mean(masked_mean(rollout.values, mask))
        metrics["objective/entropy"] = self.gathered_mean(-fill_padding(rollout.logprobs, mask).sum(dim=1))
        if rollout.valid is not None:
            # Samples left out because a reward source gave NaN/inf (drop_invalid_rewards), summed over processes.
            dropped = self.accelerator.gather((~rollout.valid).float().sum().reshape(1).to(self.accelerator.device))
            metrics["reward/invalid_samples"] = dropped.sum().item()
        for name, values in rollout.score_parts.items():
            if len(rollout.score_parts) > 1:
                metrics[f"objective/score_{name}"] = self.gathered_mean(torch.nan_to_num(values))
        if rollout.gold_scores is not None:
            metrics["objective/gold_score"] = self.gathered_nanmean(rollout.gold_scores)
        return metrics

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy answers on held-out prompts: mean reward score, and gold score where a gold scorer exists."""
        prompts = self.prompts
        count = min(len(prompts), self.limit)
        greedy = copy.deepcopy(self.generation_config)
        greedy.do_sample, greedy.temperature, greedy.top_k, greedy.top_p = False, 1.0, None, None
        completions, answer_ids = [], []
        pad = self.tokenizer.pad_token_id
        # Plain HF generate (whatever the training backend), so evaluations compare across backends.
        generator = HFRollout(self.model, self.tokenizer, greedy, self.accelerator)
        for part in micro_batches(count, self.batch_size):
            batch = prompts.collate(prompts.prompts[part], prompts.ids[part], {})
            new_tokens = generator.generate(batch["prompt_ids"], batch["prompt_mask"])
            ended = completion_mask(new_tokens, self.tokenizer.eos_token_id, pad)
            new_tokens = new_tokens.masked_fill(ended == 0, pad)
            completions.extend(completion_texts(self.tokenizer, batch["prompt_ids"], new_tokens))
            answer_ids.extend(new_tokens.cpu().unbind(0))
        texts = prompts.prompts[:count]
        completions = as_completions(texts, completions)
        columns = {key: values[:count] for key, values in prompts.columns.items()}
        answer_ids = torch.nn.utils.rnn.pad_sequence(answer_ids, batch_first=True, padding_value=pad)
        scores, _, valid = self.scorer.rewards(texts, completions, columns, answer_ids, step)
        metrics = {"eval/score": scores[valid.cpu()].mean().item()}
        if self.scorer.gold is not None:
            metrics["eval/gold_score"] = self.scorer.gold_scores(texts, completions, columns, step).nanmean().item()
        return metrics
